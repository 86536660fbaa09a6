package imagestore

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"time"

	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
	bolt "go.etcd.io/bbolt"
)

// A VM image whose format unpacks chunk by chunk (Tart) is pulled without
// storing its disk chunks: each downloads straight into the unpacker, its
// blob digest checked on the way, and the content store never sees it (a
// pass over every byte and an fsync per chunk fewer). What a retry resumes
// from is then the unpack itself, as with Tart's own pull: the extraction
// snapshot of the manifest stays after a network failure or a
// cancellation, and bucketPartial records which of its layers were
// unpacked and verified. The retry checks each of those again against the
// manifest's plaintext digest (a crash may have lost what was written)
// and downloads the rest; a chunk cut mid-way is downloaded again from its
// start.

// bucketPartial holds one partialRecord per manifest being unpacked.
var bucketPartial = []byte("partial.v1")

// partialRecord is what an interrupted unpack finished.
type partialRecord struct {
	// Done are the manifest layers unpacked and verified.
	Done []int `json:"done"`
	// Updated is when a layer was last added (or the unpack began): a
	// record no pull has updated for ingestExpiry is dropped.
	Updated time.Time `json:"updated"`
}

// partialKey is the extraction snapshot of a manifest's resumable unpack:
// one per manifest, so that a retry finds it.
func partialKey(m digest.Digest) string { return partialPrefix + m.String() }

const partialPrefix = extractPrefix + "partial/"

func isPartialKey(key string) (digest.Digest, bool) {
	rest, ok := strings.CutPrefix(key, partialPrefix)
	if !ok {
		return "", false
	}
	d, err := digest.Parse(rest)
	return d, err == nil
}

// lockExtraction serialises the unpacks of one manifest within this
// store (pulls of two names of one image): they share its extraction
// snapshot. The second finds the base committed when it gets the lock.
func (s *Store) lockExtraction(m digest.Digest) (unlock func()) { return s.extracting.Lock(m) }

func (s *Store) readPartial(m digest.Digest) (partialRecord, bool, error) {
	var r partialRecord
	var found bool
	err := s.db.View(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketPartial)
		if b == nil {
			return nil
		}
		v := b.Get([]byte(m.String()))
		if v == nil {
			return nil
		}
		found = true
		return json.Unmarshal(v, &r)
	})
	if err != nil {
		return partialRecord{}, false, fmt.Errorf("record of the interrupted unpack of %s: %w", m, err)
	}
	return r, found, nil
}

// writePartial records that layer (≥ 0) of m was unpacked; a negative
// layer starts an empty record.
func (s *Store) writePartial(m digest.Digest, layer int) error {
	return s.db.Update(func(tx *bolt.Tx) error {
		b, err := tx.CreateBucketIfNotExists(bucketPartial)
		if err != nil {
			return err
		}
		var r partialRecord
		if layer >= 0 {
			if v := b.Get([]byte(m.String())); v != nil {
				if err := json.Unmarshal(v, &r); err != nil {
					return err
				}
			}
			r.Done = append(r.Done, layer)
		}
		r.Updated = time.Now().UTC()
		v, err := json.Marshal(r)
		if err != nil {
			return err
		}
		return b.Put([]byte(m.String()), v)
	})
}

func (s *Store) dropPartial(m digest.Digest) error {
	return s.db.Update(func(tx *bolt.Tx) error {
		if b := tx.Bucket(bucketPartial); b != nil {
			return b.Delete([]byte(m.String()))
		}
		return nil
	})
}

// removePartial drops a manifest's interrupted unpack: its extraction
// snapshot and its record.
func (s *Store) removePartial(ctx context.Context, m digest.Digest) error {
	if err := s.sn.Remove(ctx, partialKey(m)); err != nil && !errdefs.IsNotFound(err) {
		return fmt.Errorf("removing the interrupted unpack of %s: %w", m, err)
	}
	return s.dropPartial(m)
}

// expirePartials drops the interrupted unpacks no pull is resuming that
// no pull has added to for maxAge (as expireIngests does for partial
// downloads), and those whose record or snapshot is missing (left by a
// crash between the two). It returns how many it dropped.
func (s *Store) expirePartials(ctx context.Context, maxAge time.Duration) (removed int) {
	// The records: fresh ones keep their snapshot; every one is a
	// candidate when its snapshot is gone.
	fresh := map[digest.Digest]bool{}
	var recorded []digest.Digest
	_ = s.db.View(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketPartial)
		if b == nil {
			return nil
		}
		return b.ForEach(func(k, v []byte) error {
			d, err := digest.Parse(string(k))
			if err != nil {
				return nil
			}
			recorded = append(recorded, d)
			var r partialRecord
			if json.Unmarshal(v, &r) == nil && time.Since(r.Updated) < maxAge {
				fresh[d] = true
			}
			return nil
		})
	})
	var stale []digest.Digest
	_ = s.sn.Walk(ctx, func(ctx context.Context, info snapshots.Info) error {
		if m, ok := isPartialKey(info.Name); ok && info.Kind == snapshots.KindActive && !fresh[m] {
			stale = append(stale, m)
		}
		return nil
	})
	for _, d := range recorded {
		if _, err := s.sn.Stat(ctx, partialKey(d)); errdefs.IsNotFound(err) {
			stale = append(stale, d)
		}
	}
	seen := map[digest.Digest]bool{}
	for _, m := range stale {
		if seen[m] || s.extracting.Busy(m) {
			continue
		}
		seen[m] = true
		if s.expirePartial(ctx, m, maxAge) {
			removed++
		}
	}
	return removed
}

// expirePartial removes m's interrupted unpack unless, now that no pull
// unpacks m, it is fresh after all (a pull added to it meanwhile).
func (s *Store) expirePartial(ctx context.Context, m digest.Digest, maxAge time.Duration) bool {
	unlock := s.lockExtraction(m)
	defer unlock()
	r, found, err := s.readPartial(m)
	if err == nil && found && time.Since(r.Updated) < maxAge {
		if _, err := s.sn.Stat(ctx, partialKey(m)); err == nil {
			return false
		}
	}
	logger(ctx).Info("removing an interrupted unpack no pull resumed", "manifest", m)
	if err := s.removePartial(ctx, m); err != nil {
		logger(ctx).Warn("removing an interrupted unpack", "manifest", m, "error", err)
		return false
	}
	return true
}

package imagestore

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/core/images"
	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	bolt "go.etcd.io/bbolt"

	"github.com/macvz/macvz/vmimage"
)

// Remove deletes every name of the image refOrID designates, then the
// blobs and VM base no other image needs. It returns NotFound when there
// is no such image (CRI callers treat that as success) and
// FailedPrecondition when a sandbox uses it.
func (s *Store) Remove(ctx context.Context, refOrID string) error {
	imgs, err := s.Resolve(ctx, refOrID)
	if err != nil {
		return err
	}
	id := imgs[0].ID()
	if s.opts.InUse != nil && s.opts.InUse(id) {
		return fmt.Errorf("image %s (%s) is used by a pod sandbox or mounted as an image volume; remove them first: %w", refOrID, id, errdefs.ErrFailedPrecondition)
	}
	s.gc.Lock()
	err = s.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketImages)
		for _, img := range imgs {
			if err := b.Delete([]byte(img.Name)); err != nil {
				return err
			}
		}
		return nil
	})
	s.gc.Unlock()
	if err != nil {
		return err
	}
	logger(ctx).Info("removed image", "id", id, "names", len(imgs))
	return s.collect(ctx)
}

// collect deletes blobs and VM bases that no image record references and
// no running pull holds: a mark-and-sweep over the content store, so a
// blob shared by two images lives as long as either.
func (s *Store) collect(ctx context.Context) error {
	s.gc.Lock()
	defer s.gc.Unlock()
	all, err := s.List(ctx)
	if err != nil {
		return err
	}
	live := map[digest.Digest]bool{}
	bases := map[string]bool{}
	trees := map[string]bool{}
	for _, img := range all {
		if img.Kind != "" {
			bases[BaseName(img.Manifest.Digest)] = true
		}
		trees[TreeName(img.Manifest.Digest)] = true
		if err := s.walkImage(ctx, img, live); err != nil {
			return err
		}
	}
	s.mu.Lock()
	for d := range s.inflight {
		live[d] = true
	}
	s.mu.Unlock()

	var dead []digest.Digest
	if err := s.content.Walk(ctx, func(info content.Info) error {
		if !live[info.Digest] {
			dead = append(dead, info.Digest)
		}
		return nil
	}); err != nil {
		return err
	}
	for _, d := range dead {
		if err := s.content.Delete(ctx, d); err != nil && !errdefs.IsNotFound(err) {
			return err
		}
	}

	s.expireIngests(ctx, ingestExpiry)
	s.expirePartials(ctx, ingestExpiry)

	var deadBases []string
	_ = s.sn.Walk(ctx, func(ctx context.Context, info snapshots.Info) error {
		if info.Kind == snapshots.KindCommitted && info.Labels[LabelBase] != "" && !bases[info.Name] {
			deadBases = append(deadBases, info.Name)
		}
		// The tree of a removed image (its volumes are gone: an image in
		// use cannot be removed).
		if isTree(info) && !trees[info.Name] {
			deadBases = append(deadBases, info.Name)
		}
		return nil
	})
	for _, b := range deadBases {
		err := s.sn.Remove(ctx, b)
		switch {
		case err == nil, errdefs.IsNotFound(err):
		case errdefs.IsFailedPrecondition(err):
			// A sandbox's clone still has it as parent; it goes with the
			// next collection after that sandbox is removed.
			logger(ctx).Info("VM base still has clones; keeping it", "base", b)
		default:
			return fmt.Errorf("removing VM base %s: %w", b, err)
		}
	}
	// What VMImage read of removed images is not needed again.
	s.boot.Range(func(k, _ any) bool {
		if !bases[BaseName(k.(digest.Digest))] {
			s.boot.Delete(k)
		}
		return true
	})
	if len(dead) > 0 || len(deadBases) > 0 {
		logger(ctx).Debug("collected unreferenced image data", "blobs", len(dead), "bases", len(deadBases))
	}
	return nil
}

// ingestExpiry is how long a partial download that no pull is writing is
// kept for a retry to resume from.
var ingestExpiry = 24 * time.Hour

// DropInterruptedPulls removes what interrupted pulls left for a retry to
// resume from (partial downloads, a Tart image's kept unpack), whatever
// their age, except what a pull running now uses; it returns how many it
// removed. Collect does the same for those untouched for a day.
func (s *Store) DropInterruptedPulls(ctx context.Context) int {
	s.gc.Lock()
	defer s.gc.Unlock()
	return s.expireIngests(ctx, 0) + s.expirePartials(ctx, 0)
}

// expireIngests drops partial downloads no pull holds that have not
// grown for maxAge: the pulls that left them are not coming back. It
// returns how many it dropped.
func (s *Store) expireIngests(ctx context.Context, maxAge time.Duration) int {
	sts, err := s.content.ListStatuses(ctx)
	if err != nil {
		// The local store fails the whole listing while an ingest is
		// being created; the next collection catches up.
		logger(ctx).Debug("listing partial downloads", "error", err)
		return 0
	}
	var stale []digest.Digest
	for _, st := range sts {
		if time.Since(st.UpdatedAt) < maxAge {
			continue
		}
		d, err := digest.Parse(strings.TrimPrefix(st.Ref, ingestPrefix))
		if err != nil || !strings.HasPrefix(st.Ref, ingestPrefix) {
			// Not ours: no pull of this store resumes it.
			if err := s.content.Abort(ctx, st.Ref); err != nil && !errdefs.IsNotFound(err) {
				logger(ctx).Warn("removing a stale partial download", "ref", st.Ref, "error", err)
			}
			continue
		}
		stale = append(stale, d)
	}
	if len(stale) > 0 {
		logger(ctx).Info("removing stale partial downloads", "count", len(stale))
		return s.abortIngests(ctx, stale)
	}
	return 0
}

// walkImage adds to seen the digests of img's blobs: its index or
// manifest, config and layers (the blobs themselves need not be
// stored: a released disk chunk is still the image's). A digest already
// in seen is not walked again.
func (s *Store) walkImage(ctx context.Context, img Image, seen map[digest.Digest]bool) error {
	err := images.Walk(ctx, images.HandlerFunc(func(ctx context.Context, d ocispec.Descriptor) ([]ocispec.Descriptor, error) {
		if seen[d.Digest] {
			return nil, nil
		}
		seen[d.Digest] = true
		children, err := images.Children(ctx, s.content, d)
		if errdefs.IsNotFound(err) {
			// Index entries for other platforms were never fetched.
			return nil, nil
		}
		return children, err
	}), img.Target)
	if err != nil {
		return fmt.Errorf("walking image %s: %w", img.Name, err)
	}
	return nil
}

// releaseDiskChunks deletes the disk chunk blobs of a VM image whose
// base is committed (Options.KeepDiskChunks). A chunk another pull holds
// (one still unpacking an image that shares it) stays; that pull
// releases it when it ends. It runs after the pull returned, without
// s.gc: a collection deletes only unreferenced blobs, and these are
// referenced until their image goes (a removal by both is NotFound).
func (s *Store) releaseDiskChunks(ctx context.Context, layers []ocispec.Descriptor) {
	var n, bytes int64
	for _, l := range layers {
		if !vmimage.IsDiskLayer(l.MediaType) {
			continue
		}
		// One blob at a time under s.mu: a pull's hold() of a digest and
		// its removal here are ordered either way, and a pull starting
		// meanwhile waits for one removal, not all of them.
		s.mu.Lock()
		if s.inflight[l.Digest] > 0 {
			s.mu.Unlock()
			continue
		}
		err := s.content.Delete(ctx, l.Digest)
		s.mu.Unlock()
		switch {
		case err == nil:
			n, bytes = n+1, bytes+l.Size
		case !errdefs.IsNotFound(err):
			logger(ctx).Warn("releasing a disk chunk", "digest", l.Digest, "error", err)
		}
	}
	if n > 0 {
		logger(ctx).Info("released the disk chunks of an unpacked VM image", "chunks", n, "bytes", bytes)
	}
}

// releaseDiskChunksLater runs releaseDiskChunks after the pull returns:
// the image is complete without its chunks, and removing a file costs what
// freeing its blocks does (about 10 ms for a 26 MB chunk on a filesystem
// mounted with discard: 0.16–0.19 s of a 1 GiB Tart pull's 16 chunks).
// The chunks a crash leaves stay referenced by their image and go with it.
func (s *Store) releaseDiskChunksLater(ctx context.Context, layers []ocispec.Descriptor) {
	ctx = context.WithoutCancel(ctx)
	s.releasing.Add(1)
	go func() {
		defer s.releasing.Done()
		s.releaseDiskChunks(ctx, layers)
	}()
}

// abortIngests drops the partial downloads of ds that no running pull
// holds. A pull holds a digest from before it opens the ingest until it
// ends, and the check and the removal happen under s.mu, so an ingest
// being written is never removed.
func (s *Store) abortIngests(ctx context.Context, ds []digest.Digest) (removed int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, d := range ds {
		if s.inflight[d] > 0 {
			continue
		}
		err := s.content.Abort(ctx, ingestRef(d))
		switch {
		case err == nil:
			removed++
		case !errdefs.IsNotFound(err):
			logger(ctx).Warn("removing a partial download", "digest", d, "error", err)
		}
	}
	return removed
}

// Collect runs garbage collection (at daemon start, and after sandboxes
// that pinned a base went away).
func (s *Store) Collect(ctx context.Context) error { return s.collect(ctx) }

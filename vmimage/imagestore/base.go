package imagestore

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"strings"

	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/macvz/macvz/snapshotter"
	"github.com/macvz/macvz/vmimage"
)

const (
	// Committed VM bases are named after the manifest they were
	// unpacked from, so two names of one image share one base.
	basePrefix    = "macvz.base/"
	extractPrefix = "macvz.extract/"
	// LabelBase marks a committed base and records its image manifest.
	LabelBase = "macvz.io/base.manifest"
)

// BaseName is the snapshot name of the unpacked VM base of a manifest.
func BaseName(manifest digest.Digest) string { return basePrefix + manifest.String() }

// layersAndBase fetches a VM image's layers and, unless its base is
// already committed, unpacks them while they download into a new active
// snapshot that is committed only when every layer verified.
func (p *pullState) layersAndBase(ctx context.Context, format vmimage.Format, mdesc ocispec.Descriptor, m ocispec.Manifest, config []byte) (retErr error) {
	name := BaseName(mdesc.Digest)
	if _, err := p.s.sn.Stat(ctx, name); err == nil {
		return p.layers(ctx, m.Layers, nil)
	} else if !errdefs.IsNotFound(err) {
		return err
	}
	key := extractPrefix + mdesc.Digest.Encoded() + "/" + randomSuffix()
	mounts, err := p.s.sn.Prepare(ctx, key, "")
	if err != nil {
		return fmt.Errorf("preparing VM base: %w", err)
	}
	defer func() {
		if retErr != nil {
			if err := p.s.sn.Remove(context.WithoutCancel(ctx), key); err != nil && !errdefs.IsNotFound(err) {
				logger(ctx).Warn("removing failed VM base extraction", "key", key, "error", err)
			}
		}
	}()
	dir, err := snapshotter.Dir(mounts)
	if err != nil {
		return err
	}
	u, err := format.NewUnpacker(ctx, m, config, dir, vmimage.Limits{MaxBytes: p.s.opts.MaxUnpackedSize, Setting: "[image] max_unpacked_size", FreeSpace: p.s.opts.FreeSpace})
	if err != nil {
		return err
	}
	if err := p.layers(ctx, m.Layers, u.Layer); err != nil {
		u.Abort()
		return err
	}
	if err := u.Finish(ctx); err != nil {
		u.Abort()
		return err
	}
	err = p.s.sn.Commit(ctx, name, key, snapshots.WithLabels(map[string]string{LabelBase: mdesc.Digest.String()}))
	if errdefs.IsAlreadyExists(err) {
		// Another pull of a different name for the same manifest won.
		return p.s.sn.Remove(ctx, key)
	}
	return err
}

func randomSuffix() string {
	var b [6]byte
	if _, err := io.ReadFull(rand.Reader, b[:]); err != nil {
		panic(err)
	}
	return hex.EncodeToString(b[:])
}

// HasBase reports whether a VM image has its unpacked base committed.
func (s *Store) HasBase(ctx context.Context, img Image) bool {
	if img.Kind == vmimage.KindNone {
		return false
	}
	_, err := s.sn.Stat(ctx, BaseName(img.Manifest.Digest))
	return err == nil
}

// removeStaleExtractions drops extraction snapshots left by a crash.
func (s *Store) removeStaleExtractions(ctx context.Context) {
	var stale []string
	_ = s.sn.Walk(ctx, func(ctx context.Context, info snapshots.Info) error {
		if info.Kind == snapshots.KindActive && strings.HasPrefix(info.Name, extractPrefix) {
			stale = append(stale, info.Name)
		}
		return nil
	})
	for _, k := range stale {
		if err := s.sn.Remove(ctx, k); err != nil {
			logger(ctx).Warn("removing stale VM base extraction", "key", k, "error", err)
		}
	}
}

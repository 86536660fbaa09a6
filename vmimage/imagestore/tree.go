package imagestore

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"strings"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/core/images"
	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/macvz/macvz/snapshotter"
	"github.com/macvz/macvz/vmimage"
	"github.com/macvz/macvz/vmimage/imagetree"
)

// Image trees: the read-only file tree an image volume shows (a CRI
// Mount with an image), unpacked once per manifest into a committed
// snapshot that every pod mounting the image shares.
const (
	treePrefix = "macvz.tree/"
	// LabelTree marks a committed image tree and records its manifest.
	LabelTree = "macvz.io/tree.manifest"
)

// TreeName is the snapshot name of a manifest's image tree.
func TreeName(manifest digest.Digest) string { return treePrefix + manifest.String() }

// Tree returns the directory of img's file tree, unpacking it first
// when it is not yet: an ordinary image's layers applied in order, or a
// macvz Linux VM image's initramfs (its guest's root file system). A
// macOS VM image is a disk, not a tree: FailedPrecondition. Concurrent
// callers for one image share one unpack.
func (s *Store) Tree(ctx context.Context, img Image) (string, error) {
	dirs, ok := s.sn.(committedDirs)
	if !ok {
		return "", fmt.Errorf("image store: the snapshotter does not give out directories: %w", errdefs.ErrNotImplemented)
	}
	name := TreeName(img.Manifest.Digest)
	if dir, err := dirs.CommittedDir(ctx, name); err == nil {
		return dir, nil
	} else if !errdefs.IsNotFound(err) {
		return "", err
	}
	unlock := s.lockTree(img.Manifest.Digest)
	defer unlock()
	if dir, err := dirs.CommittedDir(ctx, name); err == nil {
		return dir, nil
	}
	if err := s.unpackTree(ctx, img, name); err != nil {
		return "", fmt.Errorf("image %s as a volume: %w", img.Name, err)
	}
	return dirs.CommittedDir(ctx, name)
}

// lockTree serialises the unpacking of one manifest's tree.
func (s *Store) lockTree(d digest.Digest) func() {
	s.treesMu.Lock()
	if s.trees == nil {
		s.trees = map[digest.Digest]chan struct{}{}
	}
	for {
		ch, busy := s.trees[d]
		if !busy {
			break
		}
		s.treesMu.Unlock()
		<-ch
		s.treesMu.Lock()
	}
	ch := make(chan struct{})
	s.trees[d] = ch
	s.treesMu.Unlock()
	return func() {
		s.treesMu.Lock()
		delete(s.trees, d)
		s.treesMu.Unlock()
		close(ch)
	}
}

func (s *Store) unpackTree(ctx context.Context, img Image, name string) (retErr error) {
	mb, err := content.ReadBlob(ctx, s.content, img.Manifest)
	if err != nil {
		return err
	}
	var m ocispec.Manifest
	if err := json.Unmarshal(mb, &m); err != nil {
		return fmt.Errorf("manifest %s: %v: %w", img.Manifest.Digest, err, errdefs.ErrDataLoss)
	}
	// Which layers make the tree, before anything is made.
	var apply func(ctx context.Context, dir string, b *imagetree.Budget) error
	switch img.Kind {
	case vmimage.KindNone:
		cfg, _, err := s.OCIConfig(ctx, img)
		if err != nil {
			return err
		}
		if cfg.RootFS.Type != "layers" || len(cfg.RootFS.DiffIDs) != len(m.Layers) {
			return fmt.Errorf("the image config lists %d diff IDs of type %q for %d layers: %w", len(cfg.RootFS.DiffIDs), cfg.RootFS.Type, len(m.Layers), errdefs.ErrInvalidArgument)
		}
		for _, l := range m.Layers {
			if !images.IsLayerType(l.MediaType) {
				return fmt.Errorf("layer %s has media type %q, not a file system layer: %w", l.Digest, l.MediaType, errdefs.ErrNotImplemented)
			}
		}
		apply = func(ctx context.Context, dir string, b *imagetree.Budget) error {
			for i, l := range m.Layers {
				if err := s.withBlob(ctx, l, func(r io.Reader) error {
					return imagetree.ApplyLayer(ctx, r, dir, cfg.RootFS.DiffIDs[i], b)
				}); err != nil {
					return err
				}
			}
			return nil
		}
	case vmimage.KindLinux:
		var initrd *ocispec.Descriptor
		for i, l := range m.Layers {
			if l.MediaType == vmimage.MediaTypeLinuxInitrd {
				initrd = &m.Layers[i]
			}
		}
		if initrd == nil {
			return fmt.Errorf("the Linux VM image has no initramfs (its root file system is on a disk image, not a file tree): %w", errdefs.ErrFailedPrecondition)
		}
		apply = func(ctx context.Context, dir string, b *imagetree.Budget) error {
			return s.withBlob(ctx, *initrd, func(r io.Reader) error {
				return imagetree.ExtractInitrd(ctx, r, dir, b)
			})
		}
	default:
		return fmt.Errorf("a %s VM image is a disk image, not a file tree: image volumes take ordinary OCI images and macvz Linux VM images: %w", img.Kind, errdefs.ErrFailedPrecondition)
	}

	key := extractPrefix + "tree-" + img.Manifest.Digest.Encoded() + "/" + randomSuffix()
	mounts, err := s.sn.Prepare(ctx, key, "")
	if err != nil {
		return fmt.Errorf("preparing the image tree: %w", err)
	}
	defer func() {
		if retErr != nil {
			if err := s.sn.Remove(context.WithoutCancel(ctx), key); err != nil && !errdefs.IsNotFound(err) {
				logger(ctx).Warn("removing a failed image tree", "key", key, "error", err)
			}
		}
	}()
	dir, err := snapshotter.Dir(mounts)
	if err != nil {
		return err
	}
	b := &imagetree.Budget{Max: s.opts.MaxUnpackedSize, Setting: "[image] max_unpacked_size"}
	if err := apply(ctx, dir, b); err != nil {
		return err
	}
	err = s.sn.Commit(ctx, name, key, snapshots.WithLabels(map[string]string{LabelTree: img.Manifest.Digest.String()}))
	if errdefs.IsAlreadyExists(err) {
		return s.sn.Remove(ctx, key)
	}
	if err == nil {
		logger(ctx).Info("unpacked an image tree for image volumes", "image", img.Name, "bytes", b.Used())
	}
	return err
}

// withBlob hands f a reader of a stored blob.
func (s *Store) withBlob(ctx context.Context, d ocispec.Descriptor, f func(r io.Reader) error) error {
	ra, err := s.content.ReaderAt(ctx, d)
	if err != nil {
		return fmt.Errorf("layer %s: %w", d.Digest, err)
	}
	defer ra.Close()
	return f(content.NewReader(ra))
}

// RemoveTree drops an image's tree (its last image volume is gone); an
// absent tree is fine.
func (s *Store) RemoveTree(ctx context.Context, img Image) error {
	unlock := s.lockTree(img.Manifest.Digest)
	defer unlock()
	err := s.sn.Remove(ctx, TreeName(img.Manifest.Digest))
	if err == nil || errdefs.IsNotFound(err) {
		return nil
	}
	return err
}

// isTree says whether a snapshot is a committed image tree.
func isTree(info snapshots.Info) bool {
	return info.Kind == snapshots.KindCommitted && strings.HasPrefix(info.Name, treePrefix) && info.Labels[LabelTree] != ""
}

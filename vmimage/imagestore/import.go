package imagestore

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"time"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/errdefs"
	"github.com/distribution/reference"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/macvz/macvz/snapshotter"
	"github.com/macvz/macvz/vmimage"
)

// Import makes an image from src, a directory on this machine, and
// records it under ref, with no registry:
//
//   - an OCI image layout (oci-layout, index.json, blobs/): its image
//     goes through the pull's own path (verified, unpacked, recorded);
//   - a Tart VM directory or a macOS-vz-kubelet one (vmimage.OpenDir):
//     its files are cloned into a new base (instant where the file
//     system shares extents: APFS, XFS, btrfs) and the image of the
//     same format is made from the clones (vmimage.VMDir.Pack).
//
// Progress goes to WithProgress as for a pull: the layout's blobs, or
// the VM disk as it is read.
func (s *Store) Import(ctx context.Context, src, ref string, opts ...PullOption) (Image, error) {
	named, err := ParseRef(ref)
	if err != nil {
		return Image{}, err
	}
	if !filepath.IsAbs(src) {
		return Image{}, fmt.Errorf("import source %q: give an absolute path: %w", src, errdefs.ErrInvalidArgument)
	}
	fi, err := os.Stat(src)
	if errors.Is(err, fs.ErrNotExist) {
		return Image{}, fmt.Errorf("import source %s does not exist: %w", src, errdefs.ErrNotFound)
	}
	if err != nil {
		return Image{}, err
	}
	if !fi.IsDir() {
		return Image{}, fmt.Errorf("import source %s is not a directory (a Tart VM directory, a macOS-vz-kubelet one, or an OCI image layout): %w", src, errdefs.ErrInvalidArgument)
	}
	prog, stop := progressOf(ctx, opts)
	defer stop()
	if _, err := os.Lstat(filepath.Join(src, ocispec.ImageLayoutFile)); err == nil {
		return s.importLayout(ctx, src, named, prog)
	}
	v, err := vmimage.OpenDir(src)
	if err != nil {
		return Image{}, err
	}
	return s.importDir(ctx, v, named, prog)
}

// importDir clones a VM directory's files into a new base, packs the
// image from the clones and records it.
func (s *Store) importDir(ctx context.Context, v *vmimage.VMDir, named reference.Named, prog *tracker) (img Image, retErr error) {
	start := time.Now()
	log := logger(ctx).With("image", named.String(), "source", v.Dir)
	key := extractPrefix + "import/" + randomSuffix()
	mounts, err := s.sn.Prepare(ctx, key, "")
	if err != nil {
		return Image{}, fmt.Errorf("preparing VM base: %w", err)
	}
	committed := false
	defer func() {
		if !committed {
			if err := s.sn.Remove(context.WithoutCancel(ctx), key); err != nil && !errdefs.IsNotFound(err) {
				log.Warn("removing failed import's base", "key", key, "error", err)
			}
		}
	}()
	dir, err := snapshotter.Dir(mounts)
	if err != nil {
		return Image{}, err
	}
	for _, f := range v.Files {
		if _, err := snapshotter.CloneFile(filepath.Join(v.Dir, f), filepath.Join(dir, f)); err != nil {
			return Image{}, fmt.Errorf("cloning %s: %w", filepath.Join(v.Dir, f), err)
		}
	}
	// What is packed is the clone: the VM may be running from the source.
	diskInfo, err := os.Lstat(filepath.Join(dir, vmimage.DiskFile))
	if err != nil {
		return Image{}, err
	}
	diskKey := digest.Digest(vmimage.DiskFile)
	prog.setBlobs([]ocispec.Descriptor{{Digest: diskKey, MediaType: string(v.Kind) + " disk", Size: diskInfo.Size()}})
	packed, err := v.Pack(ctx, dir, runtime.GOMAXPROCS(0), func(n int64) { prog.fetched(diskKey, n) })
	if err != nil {
		return Image{}, err
	}
	prog.complete(diskKey)
	mb, err := json.Marshal(packed.Manifest)
	if err != nil {
		return Image{}, err
	}
	mdesc := ocispec.Descriptor{MediaType: ocispec.MediaTypeImageManifest, Digest: digest.FromBytes(mb), Size: int64(len(mb))}
	if packed.Manifest.ArtifactType != "" {
		mdesc.ArtifactType = packed.Manifest.ArtifactType
	}
	// Until the record is written, GC must not take the new blobs.
	var held []digest.Digest
	defer func() {
		s.release(held...)
		if retErr != nil {
			// The blobs written so far belong to no image.
			if err := s.collect(context.WithoutCancel(ctx)); err != nil {
				log.Warn("collecting blobs of a failed import", "error", err)
			}
		}
	}()
	write := func(d ocispec.Descriptor, b []byte) error {
		s.hold(d.Digest)
		held = append(held, d.Digest)
		err := content.WriteBlob(ctx, s.content, "macvz-import-"+d.Digest.String(), bytes.NewReader(b), d)
		if errdefs.IsAlreadyExists(err) {
			return nil
		}
		return err
	}
	m := packed.Manifest
	img = Image{
		Name:      named.String(),
		Target:    mdesc,
		Manifest:  mdesc,
		Config:    m.Config,
		Kind:      v.Kind,
		Size:      mdesc.Size + m.Config.Size,
		CreatedAt: time.Now().UTC(),
	}
	img.Config.Data = nil
	if err := write(img.Config, packed.Blobs[m.Config.Digest]); err != nil {
		return Image{}, err
	}
	for i, l := range m.Layers {
		img.Size += l.Size
		if b, ok := packed.Blobs[l.Digest]; ok {
			if err := write(l, b); err != nil {
				return Image{}, err
			}
			continue
		}
		if s.opts.KeepDiskChunks {
			if err := s.keepRemade(ctx, m, i, dir); err != nil {
				return Image{}, err
			}
		}
	}
	if err := write(mdesc, mb); err != nil {
		return Image{}, err
	}
	// Commit and record under the GC lock: a collection in between would
	// take the base as no image's.
	s.gc.Lock()
	defer s.gc.Unlock()
	name := BaseName(mdesc.Digest)
	err = s.sn.Commit(ctx, name, key, snapshots.WithLabels(map[string]string{LabelBase: mdesc.Digest.String()}))
	switch {
	case errdefs.IsAlreadyExists(err):
		// The same files were imported (or pulled) before: that base is
		// this image's; the deferred Remove drops the new clone.
	case err != nil:
		return Image{}, err
	default:
		committed = true
	}
	img.UpdatedAt = time.Now().UTC()
	if img, err = s.put(img); err != nil {
		return Image{}, err
	}
	log.Info("imported image", "id", img.ID(), "kind", img.Kind, "size", img.Size, "duration", time.Since(start).Round(time.Millisecond))
	return img, nil
}

// keepRemade stores a disk layer made from the base, for
// image.keep_disk_chunks = true.
func (s *Store) keepRemade(ctx context.Context, m ocispec.Manifest, i int, base string) error {
	l := m.Layers[i]
	s.hold(l.Digest)
	defer s.release(l.Digest)
	w, err := content.OpenWriter(ctx, s.content, content.WithRef("macvz-import-"+l.Digest.String()), content.WithDescriptor(l))
	if errdefs.IsAlreadyExists(err) {
		return nil
	}
	if err != nil {
		return err
	}
	defer w.Close()
	if err := w.Truncate(0); err != nil {
		return err
	}
	if err := vmimage.RemakeLayer(ctx, m, i, base, w); err != nil {
		return err
	}
	if err := w.Commit(ctx, l.Size, l.Digest); err != nil && !errdefs.IsAlreadyExists(err) {
		return err
	}
	return nil
}

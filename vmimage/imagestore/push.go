package imagestore

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"sync"
	"time"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/core/remotes"
	"github.com/containerd/errdefs"
	"github.com/distribution/reference"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"golang.org/x/sync/errgroup"

	"github.com/macvz/macvz/vmimage"
)

// Pushed is what a push sent.
type Pushed struct {
	// Manifest is the manifest pushed: the image's own, so the registry's
	// digest is the image's ID for a VM image.
	Manifest ocispec.Descriptor
	// Uploaded and Skipped count the blobs sent and the blobs the
	// registry already had; Bytes is what was uploaded.
	Uploaded, Skipped int
	Bytes             int64
}

// Push sends the image local (a name or ID in the store) to ref, as it
// is stored: the same manifest, so a pull of ref gives the same image
// (but for a Tart image whose released chunks Tart made: pushManifest).
// Blobs go in parallel (MaxConcurrentDownloads at a time), each only if
// the registry lacks it; the manifest goes last, tagged. A VM disk layer
// the store released after unpacking (image.keep_disk_chunks = false) is
// made again from the unpacked base (vmimage.RemakeLayer) and checked
// against its digest as it uploads. Progress goes to WithProgress, with
// Fetched counting the bytes uploaded.
func (s *Store) Push(ctx context.Context, local, ref string, auth *Auth, opts ...PullOption) (Pushed, error) {
	named, err := ParseRef(ref)
	if err != nil {
		return Pushed{}, err
	}
	if _, ok := named.(reference.Digested); ok {
		return Pushed{}, fmt.Errorf("push target %q names a digest: give a tag (the digest is the image's own): %w", ref, errdefs.ErrInvalidArgument)
	}
	recs, err := s.Resolve(ctx, local)
	if err != nil {
		return Pushed{}, err
	}
	rec := recs[0]
	prog, stop := progressOf(ctx, opts)
	defer stop()

	mb, err := content.ReadBlob(ctx, s.content, rec.Manifest)
	if err != nil {
		return Pushed{}, fmt.Errorf("image %s: reading its manifest: %w", rec.Name, err)
	}
	var m ocispec.Manifest
	if err := json.Unmarshal(mb, &m); err != nil {
		return Pushed{}, fmt.Errorf("image %s: manifest: %w", rec.Name, err)
	}
	// A VM image's released disk layers come from its base.
	var base string
	if rec.Kind != vmimage.KindNone {
		if dirs, ok := s.sn.(committedDirs); ok {
			base, _ = dirs.CommittedDir(ctx, BaseName(rec.Manifest.Digest))
		}
	}
	host := reference.Domain(named)
	resolver, err := s.resolver(host, auth)
	if err != nil {
		return Pushed{}, err
	}
	pusher, err := resolver.Pusher(ctx, named.String())
	if err != nil {
		return Pushed{}, classify(host, err)
	}
	m, mdesc, mb, err := s.pushManifest(ctx, rec, m, mb, base)
	if err != nil {
		return Pushed{}, err
	}
	prog.setBlobs(append([]ocispec.Descriptor{m.Config}, m.Layers...))
	start := time.Now()
	ps := &pushState{s: s, pusher: pusher, host: host, prog: prog}

	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(s.opts.MaxConcurrentDownloads)
	seen := map[digest.Digest]bool{}
	for i, l := range m.Layers {
		if seen[l.Digest] {
			continue
		}
		seen[l.Digest] = true
		g.Go(func() error {
			return ps.blob(gctx, l, func(w io.Writer) error {
				if ok, err := ps.fromContent(gctx, l, w); ok || err != nil {
					return err
				}
				if base == "" || !vmimage.CanRemake(m, i) {
					return fmt.Errorf("layer %d (%s, %s) is not in the image store: %w", i, l.MediaType, l.Digest, errdefs.ErrFailedPrecondition)
				}
				return vmimage.RemakeLayer(gctx, m, i, base, w)
			})
		})
	}
	if err := g.Wait(); err != nil {
		return Pushed{}, err
	}
	if !seen[m.Config.Digest] {
		if err := ps.blob(ctx, m.Config, func(w io.Writer) error {
			if ok, err := ps.fromContent(ctx, m.Config, w); ok || err != nil {
				return err
			}
			return fmt.Errorf("config %s is not in the image store: %w", m.Config.Digest, errdefs.ErrFailedPrecondition)
		}); err != nil {
			return Pushed{}, err
		}
	}
	if err := ps.blob(ctx, mdesc, func(w io.Writer) error {
		_, err := w.Write(mb)
		return err
	}); err != nil {
		return Pushed{}, err
	}
	out := Pushed{Manifest: mdesc, Uploaded: ps.uploaded, Skipped: ps.skipped, Bytes: ps.bytes}
	logger(ctx).Info("pushed image", "image", rec.Name, "to", named.String(), "manifest", mdesc.Digest,
		"uploaded", out.Uploaded, "skipped", out.Skipped, "bytes", out.Bytes, "duration", time.Since(start).Round(time.Millisecond))
	return out, nil
}

// pushManifest is the manifest a push sends: the image's own, unless
// Tart disk chunks the store released were made by another encoder
// (Apple's, in Tart): macvz's encoder cannot make those bytes again, so
// the push sends the disk in chunks of its own instead, under a new
// manifest (the same disk, VM config and NVRAM; a new digest). Each such
// chunk is compressed here once to learn its digest, and again as it
// uploads.
func (s *Store) pushManifest(ctx context.Context, rec Image, m ocispec.Manifest, mb []byte, base string) (ocispec.Manifest, ocispec.Descriptor, []byte, error) {
	if rec.Kind != vmimage.KindTart || m.Annotations[vmimage.AnnotationPacker] == vmimage.PackerTartLZ4 || base == "" {
		return m, rec.Manifest, mb, nil
	}
	layers := slices.Clone(m.Layers)
	var replaced, chunks int
	var mu sync.Mutex
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(runtime.GOMAXPROCS(0))
	for i, l := range m.Layers {
		if l.MediaType != vmimage.MediaTypeTartDiskV2 {
			continue
		}
		chunks++
		if _, err := s.content.Info(ctx, l.Digest); err == nil {
			continue
		}
		g.Go(func() error {
			off, size, err := vmimage.TartChunkRange(m, i)
			if err != nil {
				return err
			}
			disk, err := os.Open(filepath.Join(base, vmimage.DiskFile))
			if err != nil {
				return err
			}
			defer disk.Close()
			d, err := vmimage.DescribeTartChunk(gctx, disk, off, size)
			if err != nil {
				return err
			}
			if d.Annotations[vmimage.AnnotationTartUncompressedDigest] != l.Annotations[vmimage.AnnotationTartUncompressedDigest] {
				return fmt.Errorf("layer %d (%s): the unpacked disk's bytes %d..%d have digest %s, the image says %s: the base changed: %w", i, l.Digest, off, off+size, d.Annotations[vmimage.AnnotationTartUncompressedDigest], l.Annotations[vmimage.AnnotationTartUncompressedDigest], errdefs.ErrDataLoss)
			}
			mu.Lock()
			if d.Digest != l.Digest {
				replaced++
			}
			layers[i] = d
			mu.Unlock()
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return m, ocispec.Descriptor{}, nil, err
	}
	if replaced == 0 {
		return m, rec.Manifest, mb, nil
	}
	out := m
	out.Layers = layers
	out.Annotations = maps.Clone(m.Annotations)
	if out.Annotations == nil {
		out.Annotations = map[string]string{}
	}
	if replaced == chunks {
		out.Annotations[vmimage.AnnotationPacker] = vmimage.PackerTartLZ4
	}
	out.MediaType = ocispec.MediaTypeImageManifest
	b, err := json.Marshal(out)
	if err != nil {
		return m, ocispec.Descriptor{}, nil, err
	}
	d := ocispec.Descriptor{MediaType: ocispec.MediaTypeImageManifest, Digest: digest.FromBytes(b), Size: int64(len(b))}
	logger(ctx).Info("pushing a Tart image's disk in chunks of macvz's encoder: its own were released and another encoder made them",
		"image", rec.Name, "chunks", replaced, "manifest", d.Digest)
	return out, d, b, nil
}

type pushState struct {
	s      *Store
	pusher remotes.Pusher
	host   string
	prog   *tracker

	countMu           sync.Mutex
	uploaded, skipped int
	bytes             int64
}

// blob uploads one blob unless the registry has it, with write filling
// the upload; the pusher's Commit checks size and digest.
func (p *pushState) blob(ctx context.Context, desc ocispec.Descriptor, write func(w io.Writer) error) error {
	what := fmt.Sprintf("%s (%s)", desc.Digest, desc.MediaType)
	cw, err := p.pusher.Push(ctx, desc)
	if errdefs.IsAlreadyExists(err) {
		p.prog.complete(desc.Digest)
		p.countMu.Lock()
		p.skipped++
		p.countMu.Unlock()
		return nil
	}
	if err != nil {
		return classify(p.host, fmt.Errorf("pushing %s: %w", what, err))
	}
	defer cw.Close()
	counter := &uploadCounter{w: cw, t: p.prog, d: desc.Digest}
	if err := write(counter); err != nil {
		return classify(p.host, fmt.Errorf("pushing %s: %w", what, err))
	}
	if err := cw.Commit(ctx, desc.Size, desc.Digest); err != nil && !errdefs.IsAlreadyExists(err) {
		return classify(p.host, fmt.Errorf("pushing %s: %w", what, err))
	}
	p.prog.complete(desc.Digest)
	p.countMu.Lock()
	p.uploaded++
	p.bytes += counter.n
	p.countMu.Unlock()
	return nil
}

// fromContent copies a blob the store holds; ok is false when it holds
// none.
func (p *pushState) fromContent(ctx context.Context, desc ocispec.Descriptor, w io.Writer) (ok bool, err error) {
	ra, err := p.s.content.ReaderAt(ctx, desc)
	if errdefs.IsNotFound(err) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	defer ra.Close()
	buf := copyBufs.Get().(*[]byte)
	defer copyBufs.Put(buf)
	_, err = io.CopyBuffer(w, io.NewSectionReader(ra, 0, ra.Size()), *buf)
	return true, err
}

// uploadCounter counts what goes to the registry into the progress.
type uploadCounter struct {
	w io.Writer
	t *tracker
	d digest.Digest
	n int64
}

func (u *uploadCounter) Write(p []byte) (int, error) {
	n, err := u.w.Write(p)
	u.n += int64(n)
	u.t.fetched(u.d, int64(n))
	return n, err
}

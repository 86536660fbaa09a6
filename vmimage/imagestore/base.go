package imagestore

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"golang.org/x/sync/errgroup"

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
	unlock := p.s.lockExtraction(mdesc.Digest)
	defer unlock()
	if _, err := p.s.sn.Stat(ctx, name); err == nil {
		// The base is there: fetch what the store keeps of the image,
		// not the disk chunks it released.
		var keep []ocispec.Descriptor
		for _, l := range m.Layers {
			if p.s.opts.KeepDiskChunks || !vmimage.IsDiskLayer(l.MediaType) {
				keep = append(keep, l)
			} else {
				p.prog.complete(l.Digest) // not needed: the disk is there
			}
		}
		return p.layers(ctx, keep, nil)
	} else if !errdefs.IsNotFound(err) {
		return err
	}
	if rf, ok := format.(vmimage.ResumableFormat); ok && !p.s.opts.KeepDiskChunks {
		return p.resumableBase(ctx, rf, mdesc, m, config)
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

// resumableBase unpacks a VM base whose disk chunks download straight
// into the unpacker (see partial.go), continuing the unpack an earlier
// pull of the manifest left when there is one.
func (p *pullState) resumableBase(ctx context.Context, f vmimage.ResumableFormat, mdesc ocispec.Descriptor, m ocispec.Manifest, config []byte) (retErr error) {
	s := p.s
	log := logger(ctx).With("manifest", mdesc.Digest)
	key := partialKey(mdesc.Digest)
	rec, found, err := s.readPartial(mdesc.Digest)
	if err != nil {
		return err
	}
	resuming := false
	mounts, err := s.sn.Prepare(ctx, key, "")
	if errdefs.IsAlreadyExists(err) {
		resuming = true
		mounts, err = s.sn.Mounts(ctx, key)
	}
	if err != nil {
		return fmt.Errorf("preparing VM base: %w", err)
	}
	if !resuming || !found {
		// A fresh unpack, or a snapshot whose record a crash lost:
		// nothing in it counts as unpacked.
		rec = partialRecord{}
		if err := s.writePartial(mdesc.Digest, -1); err != nil {
			s.removePartial(context.WithoutCancel(ctx), mdesc.Digest)
			return err
		}
	}
	kept, fetched := 0, 0 // chunks resumed, chunks unpacked by this pull
	defer func() {
		if retErr == nil {
			return
		}
		if retryable(retErr) {
			log.Info("keeping the interrupted unpack for the next pull", "layers", kept+fetched, "error", retErr)
			return
		}
		if err := s.removePartial(context.WithoutCancel(ctx), mdesc.Digest); err != nil {
			log.Warn("removing a failed unpack", "error", err)
		}
	}()
	dir, err := snapshotter.Dir(mounts)
	if err != nil {
		return err
	}
	// The chunks it holds already take their space: the check of free
	// space before the unpack counts only the rest.
	un, err := f.ResumeUnpacker(ctx, m, config, dir, vmimage.Limits{MaxBytes: s.opts.MaxUnpackedSize, Setting: "[image] max_unpacked_size", FreeSpace: s.opts.FreeSpace, Held: rec.Done})
	if err != nil {
		return err
	}
	u, ok := un.(vmimage.Resumer)
	if !ok {
		un.Abort()
		return fmt.Errorf("format %s: its unpacker cannot resume: %w", f.Kind(), errdefs.ErrNotImplemented)
	}
	done := map[int]bool{}
	for _, i := range rec.Done {
		if i >= 0 && i < len(m.Layers) && u.Resumable(i) {
			done[i] = true
		}
	}
	for i := range m.Layers {
		if !u.Resumable(i) {
			continue
		}
		if done[i] {
			ok, err := u.Resume(ctx, i)
			if err != nil {
				u.Abort()
				return err
			}
			if ok {
				kept++
				p.prog.complete(m.Layers[i].Digest)
				continue
			}
			log.Warn("a disk chunk of the interrupted unpack no longer verifies; downloading it again", "layer", i, "digest", m.Layers[i].Digest)
			done[i] = false
		} else if resuming {
			if err := u.Clear(i); err != nil {
				u.Abort()
				return err
			}
		}
	}
	if resuming {
		log.Info("resuming an interrupted unpack", "layers", kept)
	}
	var mu sync.Mutex
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(s.opts.MaxConcurrentDownloads)
	for i, l := range m.Layers {
		if done[i] {
			continue
		}
		g.Go(func() error {
			if err := gctx.Err(); err != nil {
				return err // another layer failed while this one waited
			}
			w, err := u.Layer(i)
			if err != nil {
				return err
			}
			if !u.Resumable(i) {
				return p.layer(gctx, l, w)
			}
			if err := p.stream(gctx, l, w); err != nil {
				return err
			}
			mu.Lock()
			fetched++
			mu.Unlock()
			return s.writePartial(mdesc.Digest, i)
		})
	}
	if err := g.Wait(); err != nil {
		u.Abort()
		return err
	}
	if err := u.Finish(ctx); err != nil {
		u.Abort()
		return err
	}
	err = s.sn.Commit(ctx, BaseName(mdesc.Digest), key, snapshots.WithLabels(map[string]string{LabelBase: mdesc.Digest.String()}))
	if errdefs.IsAlreadyExists(err) {
		err = s.sn.Remove(ctx, key)
	}
	if err != nil {
		return err
	}
	if err := s.dropPartial(mdesc.Digest); err != nil {
		log.Warn("dropping the record of a finished unpack", "error", err)
	}
	return nil
}

// retryable: a pull that failed this way keeps what it downloaded and
// unpacked for the next one (the network, or the caller, gave up).
func retryable(err error) bool {
	return errdefs.IsUnavailable(err) || errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded)
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
	_, ok := s.Base(ctx, img)
	return ok
}

// Base is the snapshot name of a VM image's committed base; ok is false
// when the image is not a VM image or its base is not committed.
func (s *Store) Base(ctx context.Context, img Image) (name string, ok bool) {
	if img.Kind == vmimage.KindNone {
		return "", false
	}
	name = BaseName(img.Manifest.Digest)
	if _, err := s.sn.Stat(ctx, name); err != nil {
		return "", false
	}
	return name, true
}

// VMImage is a pulled VM image ready to boot.
type VMImage struct {
	// Image is the record the reference resolved to.
	Image Image
	// Descriptor is the base's vm.json: how to boot it.
	Descriptor *vmimage.Descriptor
	// Content is the digest of the image's layer digests, in order: the
	// VM it boots, whichever manifest lists them.
	Content string
	// Base is the snapshot name of its committed base: the parent of a
	// sandbox's writable clone.
	Base string
	// BaseDir is the base's directory, read in place (nothing writes it).
	BaseDir string
}

// bootInfo is what VMImage reads once per manifest: a manifest digest
// names immutable content, so its descriptor and layer list never change
// (and are not re-read on every exec, which probes make often).
type bootInfo struct {
	desc    *vmimage.Descriptor
	content string
}

// committedDirs is a snapshotter that gives out a committed snapshot's
// directory (snapshotter.Snapshotter).
type committedDirs interface {
	CommittedDir(ctx context.Context, name string) (string, error)
}

// VMImage resolves a reference or image ID to a pulled, bootable VM
// image. It returns NotFound when no image has that name, and
// FailedPrecondition for an ordinary container image or a VM image whose
// base is missing.
func (s *Store) VMImage(ctx context.Context, ref string) (VMImage, error) {
	recs, err := s.Resolve(ctx, ref)
	if errdefs.IsNotFound(err) {
		return VMImage{}, fmt.Errorf("image %q is not present; pull it first: %w", ref, errdefs.ErrNotFound)
	}
	if err != nil {
		return VMImage{}, err
	}
	rec := recs[0]
	if rec.Kind == vmimage.KindNone {
		return VMImage{}, fmt.Errorf("image %q is an ordinary container image; macvz sandboxes boot VM images (Tart, macOS-vz-kubelet, macvz Linux guest): %w", ref, errdefs.ErrFailedPrecondition)
	}
	dirs, ok := s.sn.(committedDirs)
	if !ok {
		return VMImage{}, fmt.Errorf("image store: the snapshotter does not give out base directories: %w", errdefs.ErrNotImplemented)
	}
	name := BaseName(rec.Manifest.Digest)
	dir, err := dirs.CommittedDir(ctx, name)
	if errdefs.IsNotFound(err) {
		return VMImage{}, fmt.Errorf("image %s has no unpacked VM base; remove and pull it again: %w", rec.Name, errdefs.ErrFailedPrecondition)
	}
	if err != nil {
		return VMImage{}, err
	}
	bi, err := s.bootInfo(ctx, rec, dir)
	if err != nil {
		return VMImage{}, err
	}
	return VMImage{Image: rec, Descriptor: bi.desc, Content: bi.content, Base: name, BaseDir: dir}, nil
}

// bootInfo reads (once per manifest) a VM image's descriptor from its
// base directory and the digest of its layer list.
func (s *Store) bootInfo(ctx context.Context, rec Image, dir string) (*bootInfo, error) {
	if v, ok := s.boot.Load(rec.Manifest.Digest); ok {
		return v.(*bootInfo), nil
	}
	desc, err := vmimage.ReadDescriptor(dir)
	if err != nil {
		return nil, err
	}
	b, err := content.ReadBlob(ctx, s.content, rec.Manifest)
	if err != nil {
		return nil, fmt.Errorf("image %s: reading its manifest: %w", rec.Name, err)
	}
	var m ocispec.Manifest
	if err := json.Unmarshal(b, &m); err != nil {
		return nil, fmt.Errorf("image %s: manifest: %w", rec.Name, err)
	}
	var list strings.Builder
	for _, l := range m.Layers {
		list.WriteString(l.Digest.String())
		list.WriteByte('\n')
	}
	bi := &bootInfo{desc: desc, content: digest.FromString(list.String()).String()}
	s.boot.Store(rec.Manifest.Digest, bi)
	return bi, nil
}

// removeStaleExtractions drops extraction snapshots left by a crash,
// except the resumable unpacks (expirePartials keeps the fresh ones).
func (s *Store) removeStaleExtractions(ctx context.Context) {
	var stale []string
	_ = s.sn.Walk(ctx, func(ctx context.Context, info snapshots.Info) error {
		if _, partial := isPartialKey(info.Name); partial {
			return nil
		}
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

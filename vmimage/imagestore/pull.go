package imagestore

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"runtime/debug"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/core/images"
	"github.com/containerd/containerd/v2/core/remotes"
	"github.com/containerd/errdefs"
	"github.com/containerd/platforms"
	"github.com/distribution/reference"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"golang.org/x/sync/errgroup"

	"github.com/macvz/macvz/vmimage"
)

// maxManifestSize bounds manifests, indexes and configs read into memory.
const maxManifestSize = 8 << 20

// ParseRef normalizes an image reference the way containerd's CRI does
// ("busybox" → "docker.io/library/busybox:latest").
func ParseRef(ref string) (reference.Named, error) {
	if ref == "" {
		return nil, fmt.Errorf("image reference is empty: %w", errdefs.ErrInvalidArgument)
	}
	named, err := reference.ParseDockerRef(ref)
	if err != nil {
		return nil, fmt.Errorf("image reference %q is not valid: %v: %w", ref, err, errdefs.ErrInvalidArgument)
	}
	return named, nil
}

// Pull fetches ref into the store and records it under its normalized name
// (and its repo digest). Concurrent pulls of one name with the same
// credentials share one download; pulls of different names share blobs
// through the content store's per-digest ingest lock.
func (s *Store) Pull(ctx context.Context, ref string, auth *Auth, opts ...PullOption) (Image, error) {
	named, err := ParseRef(ref)
	if err != nil {
		return Image{}, err
	}
	var o pullOptions
	for _, opt := range opts {
		opt(&o)
	}
	key := named.String() + "\x00" + authKey(auth)

	s.flightsMu.Lock()
	f := s.flights[key]
	if f == nil {
		// The download belongs to no single caller: it runs until it ends
		// or until every caller waiting for it has given up, so that one
		// impatient caller does not fail the others.
		fctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
		f = &flight{done: make(chan struct{}), cancel: cancel, progress: newTracker()}
		s.flights[key] = f
		go func() {
			img, err := s.pull(fctx, named, auth, f.progress)
			s.flightsMu.Lock()
			if s.flights[key] == f {
				delete(s.flights, key)
			}
			last := len(s.flights) == 0
			s.flightsMu.Unlock()
			if last {
				go releaseBuffers()
			}
			f.img, f.err = img, err
			cancel()
			close(f.done)
		}()
	}
	f.waiters++
	s.flightsMu.Unlock()
	stop := o.report(ctx, f.progress, f.done)
	defer stop()

	select {
	case <-f.done:
		return f.img, f.err
	case <-ctx.Done():
		s.flightsMu.Lock()
		if f.waiters--; f.waiters == 0 {
			// Nobody waits for this pull any more: stop it, and let a
			// later Pull start afresh instead of joining a dying one (it
			// resumes from what this one downloaded).
			f.cancel()
			if s.flights[key] == f {
				delete(s.flights, key)
			}
		}
		s.flightsMu.Unlock()
		return Image{}, ctx.Err()
	}
}

// flight is one pull and the callers waiting for it.
type flight struct {
	done    chan struct{} // closed when img and err are set
	img     Image
	err     error
	cancel  context.CancelFunc
	waiters int // guarded by Store.flightsMu
	// progress is the pull's, which every waiter may watch.
	progress *tracker
}

// authKey separates single-flight groups by credentials without keeping
// them in memory in clear.
func authKey(a *Auth) string {
	if a == nil {
		return ""
	}
	h := sha256.Sum256([]byte(strings.Join([]string{a.Username, a.Password, a.Auth, a.IdentityToken, a.RegistryToken, a.ServerAddress}, "\x00")))
	return hex.EncodeToString(h[:])
}

func (s *Store) pull(ctx context.Context, named reference.Named, auth *Auth, prog *tracker) (img Image, retErr error) {
	name := named.String()
	host := reference.Domain(named)
	start := time.Now()
	p := &pullState{s: s, host: host, prog: prog}
	if s.opts.PullDone != nil {
		defer func() { s.opts.PullDone(p.fetched.Load(), time.Since(start), retErr) }()
	}

	resolver, err := s.resolver(host, auth)
	if err != nil {
		return Image{}, err
	}
	_, top, err := resolver.Resolve(ctx, name)
	if err != nil {
		return Image{}, classify(host, fmt.Errorf("resolving %s: %w", name, err))
	}
	fetcher, err := resolver.Fetcher(ctx, name)
	if err != nil {
		return Image{}, classify(host, err)
	}
	p.fetcher = fetcher
	_, tagged := named.(reference.Tagged)
	return p.store(ctx, named, top, tagged)
}

// store fetches what top names through p's fetcher (a registry's, or an
// OCI layout's for an import), unpacks a VM image's base, and records the
// image under named and, when byDigest, under its repo digest too.
func (p *pullState) store(ctx context.Context, named reference.Named, top ocispec.Descriptor, byDigest bool) (img Image, retErr error) {
	s := p.s
	name := named.String()
	log := logger(ctx).With("image", name)
	start := time.Now()
	defer p.releaseAll()
	defer func() {
		// A pull that failed for a reason other than the network keeps
		// nothing: its partial downloads are dropped and its blobs are
		// unreferenced, collect them now. After a network failure (or a
		// cancellation) the fetched blobs and the partial ingests stay, so
		// that the retry resumes instead of starting over.
		if retErr != nil && !retryable(retErr) {
			held := p.releaseAll()
			cctx := context.WithoutCancel(ctx)
			s.abortIngests(cctx, held)
			if err := s.collect(cctx); err != nil {
				log.Warn("collecting blobs of a failed pull", "error", err)
			}
		}
	}()

	manifestDesc, manifest, err := p.manifest(ctx, top)
	if err != nil {
		return Image{}, err
	}
	p.prog.setBlobs(append([]ocispec.Descriptor{manifest.Config}, manifest.Layers...))
	configBytes, err := p.small(ctx, manifest.Config, "config")
	if err != nil {
		return Image{}, err
	}
	format := vmimage.Detect(manifest)

	img = Image{
		Name:      name,
		Target:    stripData(top),
		Manifest:  stripData(manifestDesc),
		Config:    stripData(manifest.Config),
		Size:      top.Size + manifest.Config.Size,
		CreatedAt: time.Now().UTC(),
	}
	if manifestDesc.Digest != top.Digest {
		img.Size += manifestDesc.Size
	}
	for _, l := range manifest.Layers {
		img.Size += l.Size
	}
	if format != nil {
		img.Kind = format.Kind()
		if err := p.layersAndBase(ctx, format, manifestDesc, manifest, configBytes); err != nil {
			return Image{}, err
		}
	} else {
		if err := p.layers(ctx, manifest.Layers, nil); err != nil {
			return Image{}, err
		}
	}
	img.UpdatedAt = time.Now().UTC()

	s.gc.Lock()
	defer s.gc.Unlock()
	records := []Image{img}
	if byDigest {
		byDigest := img
		byDigest.Name = named.Name() + "@" + top.Digest.String()
		records = append(records, byDigest)
	}
	for i, r := range records {
		stored, err := s.put(r)
		if err != nil {
			return Image{}, err
		}
		if i == 0 {
			// A re-pull keeps the record's creation time: report it.
			img = stored
		}
	}
	if format != nil && !s.opts.KeepDiskChunks {
		p.releaseAll()
		s.releaseDiskChunksLater(ctx, manifest.Layers)
	}
	log.Info("pulled image", "id", img.ID(), "kind", img.Kind, "size", img.Size, "duration", time.Since(start).Round(time.Millisecond))
	return img, nil
}

func stripData(d ocispec.Descriptor) ocispec.Descriptor {
	d.Data = nil
	return d
}

// pullState is one pull's fetcher and the digests it protects from
// garbage collection until its records are written.
type pullState struct {
	s       *Store
	fetcher remotes.Fetcher
	host    string
	// fetched counts the bytes downloaded.
	fetched atomic.Int64
	// prog is the progress callers see (nil: nobody watches).
	prog *tracker

	mu   sync.Mutex
	held []digest.Digest
}

func (p *pullState) holdDigest(d digest.Digest) {
	p.s.hold(d)
	p.mu.Lock()
	p.held = append(p.held, d)
	p.mu.Unlock()
}

// releaseAll releases every digest the pull holds and returns them.
func (p *pullState) releaseAll() []digest.Digest {
	p.mu.Lock()
	held := p.held
	p.held = nil
	p.mu.Unlock()
	p.s.release(held...)
	return held
}

// ingestRef is the content store ingest of a blob's download: one per
// digest, so that concurrent pulls of one blob share it and a retry
// resumes it.
func ingestRef(d digest.Digest) string { return ingestPrefix + d.String() }

const ingestPrefix = "macvz-pull-"

// small fetches a manifest, index or config blob and returns its bytes.
func (p *pullState) small(ctx context.Context, desc ocispec.Descriptor, what string) ([]byte, error) {
	if desc.Size > maxManifestSize {
		return nil, fmt.Errorf("%s %s (%s) is %d bytes, more than the %d allowed: %w", what, desc.Digest, desc.MediaType, desc.Size, maxManifestSize, errdefs.ErrInvalidArgument)
	}
	if _, err := p.fetch(ctx, desc, nil); err != nil {
		return nil, err
	}
	return content.ReadBlob(ctx, p.s.content, desc)
}

// manifest fetches the top-level descriptor and, for an index, the
// manifest for this host's platform.
func (p *pullState) manifest(ctx context.Context, top ocispec.Descriptor) (ocispec.Descriptor, ocispec.Manifest, error) {
	desc := top
	for depth := 0; ; depth++ {
		switch desc.MediaType {
		case ocispec.MediaTypeImageIndex, images.MediaTypeDockerSchema2ManifestList:
			if depth > 0 {
				return desc, ocispec.Manifest{}, fmt.Errorf("index %s nests another index; not supported: %w", desc.Digest, errdefs.ErrNotImplemented)
			}
			b, err := p.small(ctx, desc, "index")
			if err != nil {
				return desc, ocispec.Manifest{}, err
			}
			var idx ocispec.Index
			if err := json.Unmarshal(b, &idx); err != nil {
				return desc, ocispec.Manifest{}, fmt.Errorf("index %s (%s) is not valid JSON: %w", desc.Digest, desc.MediaType, errdefs.ErrInvalidArgument)
			}
			next, err := pickPlatform(idx, desc)
			if err != nil {
				return desc, ocispec.Manifest{}, err
			}
			desc = next
		case ocispec.MediaTypeImageManifest, images.MediaTypeDockerSchema2Manifest:
			b, err := p.small(ctx, desc, "manifest")
			if err != nil {
				return desc, ocispec.Manifest{}, err
			}
			var m ocispec.Manifest
			if err := json.Unmarshal(b, &m); err != nil {
				return desc, ocispec.Manifest{}, fmt.Errorf("manifest %s (%s) is not valid JSON: %v: %w", desc.Digest, desc.MediaType, err, errdefs.ErrInvalidArgument)
			}
			if m.Config.Digest == "" || m.Config.Digest.Validate() != nil || m.Config.Size <= 0 {
				return desc, ocispec.Manifest{}, fmt.Errorf("manifest %s (%s) has no valid config descriptor: %w", desc.Digest, desc.MediaType, errdefs.ErrInvalidArgument)
			}
			for i, l := range m.Layers {
				if l.Digest.Validate() != nil || l.Size < 0 {
					return desc, ocispec.Manifest{}, fmt.Errorf("manifest %s (%s): layer %d has an invalid digest or size: %w", desc.Digest, desc.MediaType, i, errdefs.ErrInvalidArgument)
				}
			}
			return desc, m, nil
		default:
			return desc, ocispec.Manifest{}, fmt.Errorf("unsupported manifest media type %q (%s): macvz reads OCI and Docker schema 2 manifests and indexes: %w", desc.MediaType, desc.Digest, errdefs.ErrNotImplemented)
		}
	}
}

func pickPlatform(idx ocispec.Index, desc ocispec.Descriptor) (ocispec.Descriptor, error) {
	want := platforms.Default()
	var best *ocispec.Descriptor
	var seen []string
	for i := range idx.Manifests {
		m := idx.Manifests[i]
		if m.Platform == nil {
			// Attestations and other artifacts carry no platform.
			continue
		}
		seen = append(seen, platforms.Format(*m.Platform))
		if want.Match(*m.Platform) && (best == nil || want.Less(*m.Platform, *best.Platform)) {
			best = &idx.Manifests[i]
		}
	}
	if best == nil {
		// An index of exactly one manifest without platform (how some VM
		// image tools publish) is that manifest.
		if len(idx.Manifests) == 1 && idx.Manifests[0].Platform == nil {
			return idx.Manifests[0], nil
		}
		return ocispec.Descriptor{}, fmt.Errorf("index %s has no manifest for platform %s (it has: %s): %w",
			desc.Digest, platforms.DefaultString(), strings.Join(seen, ", "), errdefs.ErrNotFound)
	}
	return *best, nil
}

// layers fetches blobs in parallel, bounded by MaxConcurrentDownloads.
// sink, when set, returns the writer that receives layer i's bytes.
func (p *pullState) layers(ctx context.Context, layers []ocispec.Descriptor, sink func(i int) (io.WriteCloser, error)) error {
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(p.s.opts.MaxConcurrentDownloads)
	for i, l := range layers {
		g.Go(func() error {
			var w io.WriteCloser
			if sink != nil {
				var err error
				if w, err = sink(i); err != nil {
					return err
				}
			}
			return p.layer(gctx, l, w)
		})
	}
	return g.Wait()
}

// layer fetches one blob, feeding w as the bytes stream in when this pull
// is the one downloading it from the start, or from the content store
// afterwards when the blob was already there, came from a resumed ingest,
// or was downloaded by a concurrent pull.
func (p *pullState) layer(ctx context.Context, desc ocispec.Descriptor, w io.WriteCloser) error {
	var tee *errWriter
	if w != nil {
		tee = &errWriter{w: w}
	}
	// A nil *errWriter in an io.Writer is not a nil interface: pass nil
	// explicitly when nothing unpacks this blob.
	var sink io.Writer
	var queue *queuedWriter
	if tee != nil {
		// The download hands its bytes to the unpacker through a short
		// queue instead of waiting while they are decoded, so the
		// connection keeps reading (and the link stays busy) while a
		// chunk's LZ4 and hashing catch up.
		queue = newQueuedWriter(tee, 4)
		sink = queue
	}
	streamed, err := p.fetch(ctx, desc, sink)
	if queue != nil {
		queue.Close() // the unpacker has every byte the download passed on
	}
	if err != nil {
		if w != nil {
			w.Close()
		}
		return err
	}
	if w == nil {
		return nil
	}
	if !streamed {
		ra, err := p.s.content.ReaderAt(ctx, desc)
		if err != nil {
			w.Close()
			return err
		}
		buf := copyBufs.Get().(*[]byte)
		_, err = io.CopyBuffer(tee, io.NewSectionReader(ra, 0, ra.Size()), *buf)
		copyBufs.Put(buf)
		ra.Close()
		if err != nil {
			w.Close()
			return err
		}
	}
	if tee.err != nil {
		w.Close()
		return fmt.Errorf("unpacking layer %s (%s): %w", desc.Digest, desc.MediaType, tee.err)
	}
	if err := w.Close(); err != nil {
		return fmt.Errorf("unpacking layer %s (%s): %w", desc.Digest, desc.MediaType, err)
	}
	return nil
}

// releaseBuffers gives the memory of the pulls' copy buffers back to
// the OS once the last pull in flight has ended. They are garbage then
// (1 MiB each, up to four queued per blob downloading: queuedWriter),
// but an idle daemon allocates nothing, so it would not collect them,
// nor return their pages, for minutes: a forced collection (a few
// milliseconds) keeps its idle footprint what it was before the pull.
var releaseBuffers = debug.FreeOSMemory

// copyBufs are large copy buffers: the decoders behind a tee work better
// on big writes than on io.Copy's 32 KiB.
var copyBufs = sync.Pool{New: func() any { b := make([]byte, 1<<20); return &b }}

// queuedWriter passes writes to w in its own goroutine, gathered into
// 1 MiB buffers of which at most depth wait: Write returns once the bytes
// are copied, and blocks only when the queue is full. w must not fail
// (errWriter): a queued write has no one to return an error to. Close
// sends what is gathered and waits until w has had every byte.
type queuedWriter struct {
	w     io.Writer
	queue chan *[]byte
	cur   *[]byte
	done  chan struct{}
}

func newQueuedWriter(w io.Writer, depth int) *queuedWriter {
	q := &queuedWriter{w: w, queue: make(chan *[]byte, depth), done: make(chan struct{})}
	go func() {
		defer close(q.done)
		for b := range q.queue {
			w.Write(*b)
			*b = (*b)[:cap(*b)]
			copyBufs.Put(b)
		}
	}()
	return q
}

func (q *queuedWriter) Write(p []byte) (int, error) {
	n := len(p)
	for len(p) > 0 {
		if q.cur == nil {
			q.cur = copyBufs.Get().(*[]byte)
			*q.cur = (*q.cur)[:0]
		}
		b := *q.cur
		k := copy(b[len(b):cap(b)], p)
		*q.cur, p = b[:len(b)+k], p[k:]
		if len(*q.cur) == cap(*q.cur) {
			q.queue <- q.cur
			q.cur = nil
		}
	}
	return n, nil
}

func (q *queuedWriter) Close() {
	if q.cur != nil && len(*q.cur) > 0 {
		q.queue <- q.cur
	}
	q.cur = nil
	close(q.queue)
	<-q.done
}

// errWriter remembers the first write error and swallows the rest of the
// stream, so a decoding failure does not abort a download whose bytes
// are still worth keeping in the content store.
type errWriter struct {
	w   io.Writer
	err error
}

func (e *errWriter) Write(b []byte) (int, error) {
	if e.err == nil {
		if _, err := e.w.Write(b); err != nil {
			e.err = err
		}
	}
	return len(b), nil
}

// stream downloads a blob straight into w, which unpacks it, without
// storing it: its size and digest are checked as the bytes pass, and a
// blob that fails either fails the layer (DataLoss) before w's own
// checks can count it as unpacked. A download cut here is not resumed
// byte by byte: the unpack resumes chunk by chunk (partial.go).
func (p *pullState) stream(ctx context.Context, desc ocispec.Descriptor, w io.WriteCloser) error {
	fail := func(err error) error {
		w.Close()
		return err
	}
	if desc.Size <= 0 {
		return fail(fmt.Errorf("blob %s (%s) has size %d in its manifest: %w", desc.Digest, desc.MediaType, desc.Size, errdefs.ErrInvalidArgument))
	}
	p.prog.resumed(desc.Digest, 0)
	rc, err := p.fetcher.Fetch(ctx, desc)
	if err != nil {
		return fail(classify(p.host, fmt.Errorf("fetching %s (%s): %w", desc.Digest, desc.MediaType, err)))
	}
	defer rc.Close()
	v := desc.Digest.Verifier()
	tee := &errWriter{w: w}
	// As in layer: the connection keeps reading while the chunk decodes.
	queue := newQueuedWriter(tee, 4)
	var dst io.Writer = io.MultiWriter(v, queue)
	if p.prog != nil {
		dst = countingWriter{w: dst, t: p.prog, d: desc.Digest}
	}
	buf := copyBufs.Get().(*[]byte)
	n, err := io.CopyBuffer(dst, io.LimitReader(rc, desc.Size+1), *buf)
	copyBufs.Put(buf)
	queue.Close()
	p.fetched.Add(n)
	switch {
	case err != nil:
		return fail(classify(p.host, fmt.Errorf("downloading %s (%s) at byte %d: %w", desc.Digest, desc.MediaType, n, err)))
	case n != desc.Size:
		return fail(fmt.Errorf("blob %s (%s): registry sent %d bytes, manifest says %d: %w", desc.Digest, desc.MediaType, n, desc.Size, errdefs.ErrDataLoss))
	case !v.Verified():
		return fail(fmt.Errorf("blob %s (%s) failed verification: its content has another digest: %w", desc.Digest, desc.MediaType, errdefs.ErrDataLoss))
	case tee.err != nil:
		return fail(fmt.Errorf("unpacking layer %s (%s): %w", desc.Digest, desc.MediaType, tee.err))
	}
	if err := w.Close(); err != nil {
		return fmt.Errorf("unpacking layer %s (%s): %w", desc.Digest, desc.MediaType, err)
	}
	p.prog.complete(desc.Digest)
	return nil
}

// fetch makes desc present in the content store, verifying its digest.
// It reports whether it streamed the blob's whole content through tee.
func (p *pullState) fetch(ctx context.Context, desc ocispec.Descriptor, tee io.Writer) (streamed bool, err error) {
	p.holdDigest(desc.Digest)
	if desc.Size <= 0 {
		return false, fmt.Errorf("blob %s (%s) has size %d in its manifest: %w", desc.Digest, desc.MediaType, desc.Size, errdefs.ErrInvalidArgument)
	}
	ref := ingestRef(desc.Digest)
	// Waits while another pull holds the same ingest; when it commits,
	// this returns AlreadyExists and the blob is not downloaded twice.
	cw, err := content.OpenWriter(ctx, p.s.content, content.WithRef(ref), content.WithDescriptor(desc))
	if errdefs.IsAlreadyExists(err) {
		p.prog.complete(desc.Digest)
		return false, nil
	}
	if err != nil {
		return false, err
	}
	defer cw.Close()
	st, err := cw.Status()
	if err != nil {
		return false, err
	}
	if st.Offset > desc.Size {
		// A bigger ingest than the blob cannot be resumed.
		cw.Close()
		p.s.content.Abort(ctx, ref)
		return p.fetch(ctx, desc, tee)
	}
	if st.Offset < desc.Size {
		p.prog.resumed(desc.Digest, st.Offset)
		rc, err := p.fetcher.Fetch(ctx, desc)
		if err != nil {
			return false, classify(p.host, fmt.Errorf("fetching %s (%s): %w", desc.Digest, desc.MediaType, err))
		}
		defer rc.Close()
		var r io.Reader = rc
		if st.Offset > 0 {
			logger(ctx).Info("resuming blob download", "digest", desc.Digest, "offset", st.Offset, "size", desc.Size)
			sk, ok := rc.(io.Seeker)
			if !ok {
				return false, fmt.Errorf("fetching %s: resuming needs a seekable reader", desc.Digest)
			}
			if _, err := sk.Seek(st.Offset, io.SeekStart); err != nil {
				return false, classify(p.host, fmt.Errorf("resuming %s at %d: %w", desc.Digest, st.Offset, err))
			}
		} else if tee != nil {
			r = io.TeeReader(rc, tee)
			streamed = true
		}
		buf := copyBufs.Get().(*[]byte)
		var dst io.Writer = cw
		if p.prog != nil {
			dst = countingWriter{w: cw, t: p.prog, d: desc.Digest}
		}
		n, err := io.CopyBuffer(dst, io.LimitReader(r, desc.Size-st.Offset+1), *buf)
		copyBufs.Put(buf)
		p.fetched.Add(n)
		if err != nil {
			return false, classify(p.host, fmt.Errorf("downloading %s (%s) at byte %d: %w", desc.Digest, desc.MediaType, st.Offset+n, err))
		}
		if st.Offset+n != desc.Size {
			p.s.content.Abort(ctx, ref)
			return false, fmt.Errorf("blob %s (%s): registry sent %d bytes, manifest says %d: %w", desc.Digest, desc.MediaType, st.Offset+n, desc.Size, errdefs.ErrDataLoss)
		}
	}
	if err := cw.Commit(ctx, desc.Size, desc.Digest); err != nil {
		if errdefs.IsAlreadyExists(err) {
			p.prog.complete(desc.Digest)
			return streamed, nil
		}
		// The bytes are not what the manifest promised: drop them, so
		// nothing of them is stored or resumed from.
		p.s.content.Abort(ctx, ref)
		return false, fmt.Errorf("blob %s (%s) failed verification: %v: %w", desc.Digest, desc.MediaType, err, errdefs.ErrDataLoss)
	}
	p.prog.complete(desc.Digest)
	return streamed, nil
}

package vmimage

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"hash"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"

	"github.com/containerd/errdefs"
	"github.com/klauspost/compress/gzip"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// Names of the files an Unpacker writes into a VM base. A Descriptor
// names the ones a base has.
const (
	DiskFile   = "disk.img"
	NVRAMFile  = "nvram.bin" // Tart NVRAM (macOS) or EFI variable store (Linux)
	AuxFile    = "aux.img"   // agoda auxiliary storage
	KernelFile = "kernel"
	InitrdFile = "initrd"
)

func invalidf(format string, args ...any) error {
	return fmt.Errorf("%s: %w", fmt.Sprintf(format, args...), errdefs.ErrInvalidArgument)
}

func notImplementedf(format string, args ...any) error {
	return fmt.Errorf("%s: %w", fmt.Sprintf(format, args...), errdefs.ErrNotImplemented)
}

// corruptf reports layer content that does not decode or does not match
// what the manifest says about it.
func corruptf(format string, args ...any) error {
	return fmt.Errorf("%s: %w", fmt.Sprintf(format, args...), errdefs.ErrDataLoss)
}

// layerName names a layer in error messages.
func layerName(i int, d ocispec.Descriptor) string {
	return fmt.Sprintf("layer %d (%s, %s)", i, d.MediaType, d.Digest)
}

// maxConfigLayer bounds the JSON config layers kept in memory.
const maxConfigLayer = 1 << 20

// sizeAnnotation parses a decimal size annotation; ok is false when the
// annotation is absent.
func sizeAnnotation(i int, d ocispec.Descriptor, key string) (size int64, ok bool, err error) {
	v, ok := d.Annotations[key]
	if !ok {
		return 0, false, nil
	}
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil || n < 0 {
		return 0, true, invalidf("%s: annotation %s=%q is not a size", layerName(i, d), key, v)
	}
	return n, true, nil
}

// digestAnnotation parses a digest annotation; ok is false when absent.
func digestAnnotation(i int, d ocispec.Descriptor, key string) (dg digest.Digest, ok bool, err error) {
	v, ok := d.Annotations[key]
	if !ok {
		return "", false, nil
	}
	dg, err = digest.Parse(v)
	if err != nil {
		return "", true, invalidf("%s: annotation %s=%q: %v", layerName(i, d), key, v, err)
	}
	return dg, true, nil
}

// tracker records which layers were unpacked, for Finish and Abort.
type tracker struct {
	mu      sync.Mutex
	state   []layerState
	closers []func() // run by Abort: stop decoders still running
}

type layerState uint8

const (
	layerPending layerState = iota
	layerOpen
	layerDone
	layerFailed
)

func newTracker(n int) *tracker { return &tracker{state: make([]layerState, n)} }

func (t *tracker) open(i int) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if i < 0 || i >= len(t.state) {
		return invalidf("layer %d: the manifest has %d layers", i, len(t.state))
	}
	if t.state[i] != layerPending {
		return fmt.Errorf("layer %d is already being unpacked: %w", i, errdefs.ErrFailedPrecondition)
	}
	t.state[i] = layerOpen
	return nil
}

// reset puts an opened layer back to pending: a resume found it not
// unpacked after all, and it is written again.
func (t *tracker) reset(i int) {
	t.mu.Lock()
	t.state[i] = layerPending
	t.mu.Unlock()
}

func (t *tracker) onAbort(f func()) {
	t.mu.Lock()
	t.closers = append(t.closers, f)
	t.mu.Unlock()
}

func (t *tracker) closed(i int, err error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if err != nil {
		t.state[i] = layerFailed
	} else {
		t.state[i] = layerDone
	}
}

// check reports the first layer among want that was not unpacked.
func (t *tracker) check(m ocispec.Manifest, want []int) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, i := range want {
		if t.state[i] != layerDone {
			return fmt.Errorf("%s was not unpacked: %w", layerName(i, m.Layers[i]), errdefs.ErrFailedPrecondition)
		}
	}
	return nil
}

func (t *tracker) abort() {
	t.mu.Lock()
	closers := t.closers
	t.closers = nil
	t.mu.Unlock()
	for _, f := range closers {
		f()
	}
}

// layerWriter ties a layer's writer to the tracker; Close runs finish
// once and remembers its result.
type layerWriter struct {
	w      io.Writer
	finish func() error
	i      int
	t      *tracker
	once   sync.Once
	err    error
	// werr is the first failed Write's error. A write refused by the
	// image's cap (InvalidArgument) is why the layer is then short: the
	// short count finish finds must not replace it with DataLoss.
	werr error
}

func (l *layerWriter) Write(p []byte) (int, error) {
	n, err := l.w.Write(p)
	if err != nil && l.werr == nil {
		l.werr = err
	}
	return n, err
}

func (l *layerWriter) Close() error {
	l.once.Do(func() {
		l.err = l.finish()
		if errdefs.IsInvalidArgument(l.werr) {
			l.err = l.werr
		}
		l.t.closed(l.i, l.err)
	})
	return l.err
}

// discard is the writer for layers a format does not use.
func (t *tracker) discard(i int) io.WriteCloser {
	return &layerWriter{w: io.Discard, finish: func() error { return nil }, i: i, t: t}
}

// holeSize is the granularity of zero detection: an aligned run of this
// many zero bytes is not written, so it stays a hole in the sparse file.
// 64 KiB is a multiple of the block size of APFS, ext4, XFS and btrfs.
const holeSize = 64 << 10

var zeros [holeSize]byte

// sparseWriter writes a stream at [base, base+limit) of a file that was
// truncated to cover that range and so reads as zeros there: zero runs
// are skipped, which keeps them holes. Every byte of the range must be
// written by this writer alone.
type sparseWriter struct {
	f      *os.File
	base   int64
	n      int64 // bytes received
	queued int64 // of n, how much was handed to startWriteback
	limit  int64 // <0: no announced size
	h      hash.Hash
	b      *budget      // the image's cap and free-space checks
	what   string       // the layer, for errors
	wrote  bool         // a non-zero run was written: the layer is not all zeros
	d      *directStage // nil: every write goes through f (direct.go)
}

func (s *sparseWriter) Write(p []byte) (int, error) {
	if s.limit >= 0 && s.n+int64(len(p)) > s.limit {
		return 0, corruptf("%s: content is larger than the %d bytes the manifest announces", s.what, s.limit)
	}
	if err := s.b.add(s.what, len(p)); err != nil {
		return 0, err
	}
	var hashed chan struct{}
	if s.h != nil && len(p) >= 1<<20 {
		// Hashing is the costliest step: overlap it with the writes, so a
		// single layer uses two cores.
		hashed = make(chan struct{})
		go func() {
			s.h.Write(p)
			close(hashed)
		}()
	} else if s.h != nil {
		s.h.Write(p)
	}
	if err := s.writeSparse(p); err != nil {
		if hashed != nil {
			<-hashed
		}
		return 0, err
	}
	if hashed != nil {
		<-hashed
	}
	s.n += int64(len(p))
	if s.n-s.queued >= writebackStep {
		s.writeback()
	}
	return len(p), nil
}

// writebackStep is how much a layer writes before its pages are sent to
// the disk. Without it the disk's dirty pages (most of a GiB: far under
// the kernel's dirty limits) waited for the unpacker's final Sync, which
// then wrote them all after the last byte arrived: 0.4–0.6 s of a 1 GiB
// Tart pull's 4 s through a 1 Gbit/s link. Sent as they are written, they
// go to the disk while the download goes on.
const writebackStep = 8 << 20

// writeback starts writing what the layer wrote since the last call.
func (s *sparseWriter) writeback() {
	if s.n > s.queued {
		startWriteback(s.f, s.base+s.queued, s.n-s.queued)
		s.queued = s.n
	}
}

func (s *sparseWriter) writeSparse(p []byte) error {
	off := s.base + s.n
	run := -1 // start of a pending run of non-zero granules
	for i := 0; i < len(p); {
		j := min(len(p), i+holeSize-int((off+int64(i))%holeSize))
		if bytes.Equal(p[i:j], zeros[:j-i]) {
			if run >= 0 {
				if err := s.writeAt(p[run:i], off+int64(run)); err != nil {
					return err
				}
				s.wrote = true
				run = -1
			}
		} else if run < 0 {
			run = i
		}
		i = j
	}
	if run >= 0 {
		if err := s.writeAt(p[run:], off+int64(run)); err != nil {
			return err
		}
		s.wrote = true
	}
	return nil
}

// flush writes what the direct stage holds; verify does it first.
func (s *sparseWriter) flush() error {
	if s.d == nil {
		return nil
	}
	return s.d.close()
}

func (s *sparseWriter) writeAt(p []byte, off int64) error {
	if s.d != nil {
		return s.d.writeAt(p, off)
	}
	_, err := s.f.WriteAt(p, off)
	return err
}

// verify checks the amount written and, when want is set, its digest.
// Every layer ends with it, so it also sends the layer's last pages to
// the disk.
func (s *sparseWriter) verify(what string, size int64, want digest.Digest) error {
	if err := s.flush(); err != nil {
		return err
	}
	s.writeback()
	if s.n != size {
		return corruptf("%s: decoded %d bytes, the manifest says %d", what, s.n, size)
	}
	if want != "" {
		if got := digest.NewDigest(want.Algorithm(), s.h); got != want {
			return corruptf("%s: decoded content has digest %s, the manifest says %s", what, got, want)
		}
	}
	return nil
}

// newHash returns a hash for verifying against d.
func newHash(i int, desc ocispec.Descriptor, d digest.Digest) (hash.Hash, error) {
	if d == "" {
		return nil, nil
	}
	if !d.Algorithm().Available() {
		return nil, notImplementedf("%s: digest algorithm %q", layerName(i, desc), d.Algorithm())
	}
	return d.Algorithm().Hash(), nil
}

// createSized creates name in dir with the given size, all holes.
func createSized(dir, name string, size int64) (*os.File, error) {
	f, err := os.OpenFile(filepath.Join(dir, name), os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return nil, err
	}
	if err := f.Truncate(size); err != nil {
		f.Close()
		return nil, err
	}
	return f, nil
}

// openSized opens name in dir, an existing file an interrupted unpack
// left there (or a new one), at the given size. A file of another size is
// not that unpack's: it is emptied.
func openSized(dir, name string, size int64) (*os.File, error) {
	f, err := os.OpenFile(filepath.Join(dir, name), os.O_RDWR|os.O_CREATE|syscall.O_NOFOLLOW, 0o644)
	if err != nil {
		return nil, err
	}
	fi, err := f.Stat()
	if err == nil && !fi.Mode().IsRegular() {
		err = fmt.Errorf("%s is not a regular file", f.Name())
	}
	if err == nil && fi.Size() != size {
		if err = f.Truncate(0); err == nil {
			err = f.Truncate(size)
		}
	}
	if err != nil {
		f.Close()
		return nil, err
	}
	return f, nil
}

// gunzipTo decodes a gzip stream written to the returned writer into dst.
// Gzip decoders pull, layers are pushed: a goroutine bridges the two, and
// Close waits for it and returns its error.
func gunzipTo(t *tracker, dst io.Writer) io.WriteCloser {
	pr, pw := io.Pipe()
	g := &gunzip{pw: pw, done: make(chan struct{})}
	go func() {
		defer close(g.done)
		// Inflate hands on small pieces; batch them for the sparse writer.
		bw := bufio.NewWriterSize(dst, 1<<20)
		zr, err := gzip.NewReader(pr)
		if err == nil {
			// Reads to EOF: concatenated gzip members are one stream, and
			// anything else after the first member is an error.
			_, err = zr.WriteTo(bw)
		}
		if err == nil {
			err = bw.Flush()
		}
		g.err = err
		// Unblocks a writer still pushing after a failure.
		pr.CloseWithError(err)
	}()
	t.onAbort(func() {
		pw.CloseWithError(errors.New("unpacking aborted"))
		<-g.done
	})
	return g
}

type gunzip struct {
	pw   *io.PipeWriter
	done chan struct{}
	err  error
}

func (g *gunzip) Write(p []byte) (int, error) { return g.pw.Write(p) }

func (g *gunzip) Close() error {
	g.pw.Close()
	<-g.done
	return g.err
}

// limitedBuffer keeps a small layer in memory.
type limitedBuffer struct {
	what string
	b    []byte
}

func (l *limitedBuffer) Write(p []byte) (int, error) {
	if len(l.b)+len(p) > maxConfigLayer {
		return 0, invalidf("%s is larger than %d bytes", l.what, maxConfigLayer)
	}
	l.b = append(l.b, p...)
	return len(p), nil
}

// fileWriter streams a layer as-is into a new file of the base. The
// layer's bytes are its blob, of the size its descriptor gives.
func fileWriter(t *tracker, b *budget, i int, desc ocispec.Descriptor, dir, name string) (io.WriteCloser, error) {
	f, err := os.OpenFile(filepath.Join(dir, name), os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		t.closed(i, err)
		return nil, err
	}
	t.onAbort(func() { f.Close() })
	what := layerName(i, desc)
	cw := &countingWriter{w: f, b: b, what: what, limit: desc.Size}
	return &layerWriter{w: cw, i: i, t: t, finish: func() error {
		err := f.Sync()
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err == nil && cw.n != desc.Size {
			err = corruptf("%s: %d bytes, the manifest says %d", what, cw.n, desc.Size)
		}
		return err
	}}, nil
}

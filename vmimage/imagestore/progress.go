package imagestore

import (
	"context"
	"io"
	"sync"
	"time"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// Progress is a pull at one moment: what a CLI shows while a 40 GB
// macOS image downloads. Every caller of a shared pull sees the same.
type Progress struct {
	// Started is when the pull began (a joined pull's, not the joiner's).
	Started time.Time
	// Blobs are the manifest's config and layers in manifest order, known
	// once the manifest is read (none before).
	Blobs []BlobProgress
}

// BlobProgress is one blob of a pull.
type BlobProgress struct {
	Digest    digest.Digest
	MediaType string
	Size      int64
	// Done is how many of its bytes are stored: what a resumed download
	// had, what this pull downloaded, or all of them once it is complete
	// (already there, or not needed: a disk chunk of an unpacked image).
	Done int64
	// Fetched is what this pull downloaded of it.
	Fetched  int64
	Complete bool
}

// Totals sums the blobs: their size, the bytes stored and the bytes this
// pull downloaded.
func (p Progress) Totals() (size, done, fetched int64) {
	for _, b := range p.Blobs {
		size += b.Size
		done += b.Done
		fetched += b.Fetched
	}
	return size, done, fetched
}

// tracker is a pull's progress, updated by its fetches.
type tracker struct {
	mu      sync.Mutex
	started time.Time
	blobs   []BlobProgress
	index   map[digest.Digest]int
}

func newTracker() *tracker {
	return &tracker{started: time.Now(), index: map[digest.Digest]int{}}
}

// setBlobs names the blobs the pull will store (the config and the
// layers; a blob listed twice is one).
func (t *tracker) setBlobs(ds []ocispec.Descriptor) {
	if t == nil {
		return
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, d := range ds {
		if _, ok := t.index[d.Digest]; ok {
			continue
		}
		t.index[d.Digest] = len(t.blobs)
		t.blobs = append(t.blobs, BlobProgress{Digest: d.Digest, MediaType: d.MediaType, Size: max(d.Size, 0)})
	}
}

func (t *tracker) update(d digest.Digest, f func(b *BlobProgress)) {
	if t == nil {
		return
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if i, ok := t.index[d]; ok {
		f(&t.blobs[i])
	}
}

// resumed: the blob's download starts at offset (a partial ingest).
func (t *tracker) resumed(d digest.Digest, offset int64) {
	t.update(d, func(b *BlobProgress) { b.Done = min(offset, b.Size) })
}

// fetched: n more bytes of the blob arrived.
func (t *tracker) fetched(d digest.Digest, n int64) {
	t.update(d, func(b *BlobProgress) {
		b.Fetched += n
		b.Done = min(b.Done+n, b.Size)
	})
}

// complete: the blob is stored (or not needed).
func (t *tracker) complete(d digest.Digest) {
	t.update(d, func(b *BlobProgress) { b.Done, b.Complete = b.Size, true })
}

func (t *tracker) snapshot() Progress {
	t.mu.Lock()
	defer t.mu.Unlock()
	return Progress{Started: t.started, Blobs: append([]BlobProgress(nil), t.blobs...)}
}

// PullOption changes how Pull reports.
type PullOption func(*pullOptions)

type pullOptions struct {
	every    time.Duration
	progress func(Progress)
}

// WithProgress has Pull call f with the pull's progress every interval
// (at least 50 ms) while it runs, and once more when it ends, from one
// goroutine, never after Pull returned.
func WithProgress(every time.Duration, f func(Progress)) PullOption {
	return func(o *pullOptions) { o.every, o.progress = max(every, 50*time.Millisecond), f }
}

// report calls o.progress with t's progress until done is closed or ctx
// ends, then once more; it returns when the last call has.
func (o pullOptions) report(ctx context.Context, t *tracker, done <-chan struct{}) (stop func()) {
	if o.progress == nil {
		return func() {}
	}
	quit := make(chan struct{})
	finished := make(chan struct{})
	go func() {
		defer close(finished)
		tick := time.NewTicker(o.every)
		defer tick.Stop()
		for {
			select {
			case <-tick.C:
				o.progress(t.snapshot())
			case <-done:
				o.progress(t.snapshot())
				return
			case <-quit:
				// Pull is returning: when the pull ended, the last
				// view is still owed.
				select {
				case <-done:
					o.progress(t.snapshot())
				default:
				}
				return
			case <-ctx.Done():
				return
			}
		}
	}()
	return func() { close(quit); <-finished }
}

// countingWriter tells the tracker of each write's bytes.
type countingWriter struct {
	w io.Writer
	t *tracker
	d digest.Digest
}

func (c countingWriter) Write(b []byte) (int, error) {
	n, err := c.w.Write(b)
	c.t.fetched(c.d, int64(n))
	return n, err
}

// progressOf is the progress of a call that runs alone (an import, a
// push: no shared flight), reported as opts ask until stop.
func progressOf(ctx context.Context, opts []PullOption) (*tracker, func()) {
	var o pullOptions
	for _, opt := range opts {
		opt(&o)
	}
	prog := newTracker()
	done := make(chan struct{})
	stopReport := o.report(ctx, prog, done)
	return prog, func() {
		close(done)
		stopReport()
	}
}

package vmimage

import (
	"fmt"
	"io"
	"math"
	"sync"
	"sync/atomic"

	"github.com/containerd/errdefs"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"golang.org/x/sys/unix"
)

// DefaultMaxUnpackedSize is the cap on what one image unpacks to when
// Limits.MaxBytes is not set.
const DefaultMaxUnpackedSize = 200 << 30

// Limits bound what unpacking one image may write. Registries are
// untrusted: an LZ4 or gzip stream of a few MiB can decode to terabytes,
// and annotations may announce any size.
type Limits struct {
	// MaxBytes caps the bytes one image unpacks to: every byte of every
	// layer's output counts, holes included. An image whose layers
	// announce more is refused before anything is written; one whose
	// output grows past it is stopped. 0 means DefaultMaxUnpackedSize.
	MaxBytes int64
	// Setting names the configuration that sets MaxBytes, for error
	// messages ("[image] max_unpacked_size").
	Setting string
	// FreeSpace reports the bytes available and the total size of the
	// file system holding dir; nil means statfs(2).
	FreeSpace func(dir string) (avail, total uint64, err error)
	// Held are the layers an interrupted unpack of the image already has
	// in dir (ResumeUnpacker): the free-space check before unpacking
	// leaves their blobs out, since what they unpacked to takes its space
	// already. One that then fails its check is downloaded again under
	// the checks while unpacking.
	Held []int
}

// spaceCheckEvery is how much output passes between two free-space
// checks while unpacking (a variable for tests).
var spaceCheckEvery int64 = 64 << 20

// minFree is the free space an unpack leaves on its file system: 1 GiB,
// or 2% of a file system smaller than 50 GiB.
func minFree(total uint64) uint64 { return min(1<<30, total/50) }

func statfsFree(dir string) (avail, total uint64, err error) {
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return 0, 0, err
	}
	// Field types differ between linux and darwin.
	bsize := uint64(st.Bsize)
	return uint64(st.Bavail) * bsize, uint64(st.Blocks) * bsize, nil
}

// budget is one image's share of Limits, shared by its layers' writers,
// which may run concurrently.
type budget struct {
	dir     string
	max     int64
	setting string
	free    func(dir string) (avail, total uint64, err error)
	held    map[int]bool // Limits.Held
	written atomic.Int64
	spaceMu sync.Mutex // one statfs at a time
}

func newBudget(dir string, l Limits) *budget {
	b := &budget{dir: dir, max: l.MaxBytes, setting: l.Setting, free: l.FreeSpace}
	if b.max <= 0 {
		b.max = DefaultMaxUnpackedSize
	}
	if b.setting == "" {
		b.setting = "the limit on unpacked image size"
	}
	if b.free == nil {
		b.free = statfsFree
	}
	if len(l.Held) > 0 {
		b.held = make(map[int]bool, len(l.Held))
		for _, i := range l.Held {
			b.held[i] = true
		}
	}
	return b
}

// tooLarge is the error of output beyond the cap.
func (b *budget) tooLarge(what string) error {
	return fmt.Errorf("image %s unpacks to more than the %s limit (%s): %w", what, formatSize(b.max), b.setting, errdefs.ErrInvalidArgument)
}

// declared refuses, before anything is written, an image whose layers
// announce more output than the cap, or whose blobs alone are more than
// the free space allows. sizes[i] is what layer i unpacks to, as its
// manifest announces it. The free-space check counts the blobs, not the
// announced sizes: VM disks are sparse (a 50 GiB macOS disk may hold 20
// GiB of data), so the announced size would refuse images that fit; the
// checks while unpacking catch the rest. Held layers are not counted.
func (b *budget) declared(m ocispec.Manifest, sizes map[int]int64) error {
	var total, blobs int64
	for i, l := range m.Layers {
		if l.Size > 0 && !b.held[i] && blobs <= math.MaxInt64-l.Size {
			blobs += l.Size
		}
	}
	for i := range m.Layers {
		n, ok := sizes[i]
		if !ok {
			continue
		}
		if n > b.max {
			return fmt.Errorf("image %s declares %s unpacked, more than the %s limit (%s): %w", layerName(i, m.Layers[i]), formatSize(n), formatSize(b.max), b.setting, errdefs.ErrInvalidArgument)
		}
		if total > b.max-n {
			return fmt.Errorf("image layers declare more than the %s limit (%s) unpacked in all, counting up to %s: %w", formatSize(b.max), b.setting, layerName(i, m.Layers[i]), errdefs.ErrInvalidArgument)
		}
		total += n
	}
	avail, fsTotal, err := b.free(b.dir)
	if err != nil {
		return fmt.Errorf("checking free space on %s: %w", b.dir, err)
	}
	margin := minFree(fsTotal)
	if uint64(blobs)+margin > avail {
		more := ""
		if len(b.held) > 0 {
			more = " more than the interrupted pull it resumes unpacked"
		}
		return fmt.Errorf("not enough free space on %s to unpack the image: it takes at least %s%s, %s are free and %s must stay free: %w",
			b.dir, formatSize(blobs), more, formatSize(int64(min(avail, 1<<62))), formatSize(int64(margin)), errdefs.ErrResourceExhausted)
	}
	return nil
}

// add accounts for n more bytes of output of layer what (holes included)
// before they are written, and checks the free space every
// spaceCheckEvery bytes.
func (b *budget) add(what string, n int) error {
	after := b.written.Add(int64(n))
	if after > b.max {
		return b.tooLarge(what)
	}
	if before := after - int64(n); before/spaceCheckEvery == after/spaceCheckEvery {
		return nil
	}
	b.spaceMu.Lock()
	defer b.spaceMu.Unlock()
	avail, total, err := b.free(b.dir)
	if err != nil {
		return fmt.Errorf("checking free space on %s: %w", b.dir, err)
	}
	if margin := minFree(total); avail < margin+uint64(n) {
		return fmt.Errorf("not enough free space on %s to unpack image %s: %s free, %s must stay free: %w",
			b.dir, what, formatSize(int64(min(avail, 1<<62))), formatSize(int64(margin)), errdefs.ErrResourceExhausted)
	}
	return nil
}

// isLimit reports whether err is a refusal by a budget, which must reach
// the caller as it is instead of as corrupt content.
func isLimit(err error) bool {
	return errdefs.IsResourceExhausted(err) || errdefs.IsInvalidArgument(err)
}

// formatSize writes a byte count for people: "200 GiB", "3 MiB",
// "1.5 GiB", "123 bytes".
func formatSize(n int64) string {
	for _, u := range []struct {
		shift uint
		name  string
	}{{40, "TiB"}, {30, "GiB"}, {20, "MiB"}, {10, "KiB"}} {
		if n >= 1<<u.shift {
			if n%(1<<u.shift) == 0 {
				return fmt.Sprintf("%d %s", n>>u.shift, u.name)
			}
			return fmt.Sprintf("%.1f %s (%d bytes)", float64(n)/float64(int64(1)<<u.shift), u.name, n)
		}
	}
	return fmt.Sprintf("%d bytes", n)
}

// countingWriter charges a layer's file output to the image's budget and
// refuses output beyond limit (the size the manifest announces; <0: no
// announced size).
type countingWriter struct {
	w     io.Writer
	b     *budget
	what  string
	n     int64
	limit int64
}

func (c *countingWriter) Write(p []byte) (int, error) {
	if c.limit >= 0 && c.n+int64(len(p)) > c.limit {
		return 0, corruptf("%s: content is larger than the %d bytes the manifest announces", c.what, c.limit)
	}
	if err := c.b.add(c.what, len(p)); err != nil {
		return 0, err
	}
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

// decodeErr classifies the error of a layer's decoder: refusals by the
// writers behind it pass as they are, anything else is corrupt content.
func decodeErr(what string, err error) error {
	if err == nil || isLimit(err) || errdefs.IsDataLoss(err) {
		return err
	}
	return corruptf("%s: %v", what, err)
}

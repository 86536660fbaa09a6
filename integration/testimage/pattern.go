package testimage

import (
	"encoding/binary"
	"math/rand/v2"
	"runtime"
	"strconv"
	"sync"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// patternSegment is the unit DiskPattern generates independently (and in
// parallel): the output depends only on the seed, never on the number of
// cores.
const patternSegment = 4 << 20

var words = []string{
	"the", "quick", "brown", "fox", "jumps", "over", "lazy", "dog", "kernel",
	"disk", "block", "sector", "macvz", "virtual", "machine", "image", "layer",
	"chunk", "registry", "snapshot", "guest", "host", "boot", "loader", "init",
}

// DiskPattern returns size bytes that look like a used disk: runs of
// zeros (which unpack as holes), random bytes (incompressible, stored as
// uncompressed blocks) and text, 64-256 KiB each, chosen from seed.
func DiskPattern(seed uint64, size int64) []byte {
	b := make([]byte, size)
	segs := int((size + patternSegment - 1) / patternSegment)
	parallel(segs, func(k int) {
		lo := int64(k) * patternSegment
		fillSegment(b[lo:min(lo+patternSegment, size)], seed, uint64(k))
	})
	return b
}

func fillSegment(b []byte, seed, k uint64) {
	r := rand.New(rand.NewPCG(seed, k))
	line := k << 32
	var text []byte
	for len(b) > 0 {
		run := b[:min(len(b), (64+r.IntN(193))<<10)]
		b = b[len(run):]
		switch p := r.IntN(100); {
		case p < 40:
			// Already zero.
		case p < 65:
			fillRandom(run, r)
		default:
			text = text[:0]
			for len(text) < len(run) {
				text = strconv.AppendUint(text, line, 16)
				line++
				for range 3 + r.IntN(10) {
					text = append(text, ' ')
					text = append(text, words[r.IntN(len(words))]...)
				}
				text = append(text, '\n')
			}
			copy(run, text)
		}
	}
}

func fillRandom(b []byte, r *rand.Rand) {
	var tmp [8]byte
	for len(b) > 0 {
		binary.LittleEndian.PutUint64(tmp[:], r.Uint64())
		b = b[copy(b, tmp[:]):]
	}
}

// parallel runs f(0..n-1) on all cores.
func parallel(n int, f func(i int)) {
	workers := min(n, runtime.GOMAXPROCS(0))
	var wg sync.WaitGroup
	next := make(chan int)
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				f(i)
			}
		}()
	}
	for i := range n {
		next <- i
	}
	close(next)
	wg.Wait()
}

// randomBytes returns n deterministic pseudo-random bytes.
func randomBytes(seed, stream uint64, n int) []byte {
	b := make([]byte, n)
	fillRandom(b, rand.New(rand.NewPCG(seed, stream)))
	return b
}

// uniqueBlobs drops blobs whose digest came earlier: an image may
// reference one blob several times (identical disk chunks) but a
// registry holds it once.
func uniqueBlobs(blobs []Blob) []Blob {
	seen := map[string]bool{}
	out := blobs[:0:0]
	for _, b := range blobs {
		if !seen[b.Desc.Digest.String()] {
			seen[b.Desc.Digest.String()] = true
			out = append(out, b)
		}
	}
	return out
}

func descs(blobs []Blob) []ocispec.Descriptor {
	d := make([]ocispec.Descriptor, len(blobs))
	for i, b := range blobs {
		d[i] = b.Desc
	}
	return d
}

package vmimage_test

import (
	"os"
	"sync"
	"testing"
	"time"

	"github.com/macvz/macvz/integration/testimage"
)

var (
	benchOnce sync.Once
	benchImg  testimage.Image
	benchSize int64 = 1 << 30
)

// BenchmarkTartUnpack unpacks a 1 GiB Tart disk (two 512 MiB chunks, as
// Tart cuts them) from memory, layers in parallel as a pull feeds them:
// decoding, digest verification and sparse writes, plus the final fsync.
func BenchmarkTartUnpack(b *testing.B) {
	benchOnce.Do(func() {
		start := time.Now()
		img, err := testimage.Tart(testimage.TartOptions{Seed: 1, DiskSize: benchSize})
		if err != nil {
			b.Fatal(err)
		}
		benchImg = img
		b.Logf("built the 1 GiB Tart image in %v", time.Since(start).Round(time.Millisecond))
	})
	b.SetBytes(benchSize)
	for b.Loop() {
		dir, err := os.MkdirTemp("", "tart-bench")
		if err != nil {
			b.Fatal(err)
		}
		if err := unpack(b, benchImg, dir); err != nil {
			b.Fatal(err)
		}
		b.StopTimer()
		os.RemoveAll(dir)
		b.StartTimer()
	}
}

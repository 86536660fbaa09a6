package vmimage_test

import (
	"os"
	"sync"
	"syscall"
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

var (
	freeOnce sync.Once
	freeImg  testimage.Image
)

// BenchmarkTartUnpackFreeSpace unpacks a 2 GiB Tart disk of which the
// first 512 MiB chunk holds data and the other three are free space (all
// zeros: one layer digest, as a macOS disk's free space is), every layer
// at once from memory: the zero chunks all begin before the first of
// them is done, so this shows the zero blocks' part of the saving (a
// pull's twins mostly begin after the first, reading the blob it stored:
// imagestore's BenchmarkPullTartFreeSpace). cpu-s/GiB is this process's
// CPU time (user and system) per GiB of disk.
func BenchmarkTartUnpackFreeSpace(b *testing.B) {
	const size = 2 << 30
	freeOnce.Do(func() {
		disk := make([]byte, size)
		copy(disk, testimage.DiskPattern(3, 512<<20))
		img, err := testimage.Tart(testimage.TartOptions{Disk: disk, ChunkSize: 512 << 20})
		if err != nil {
			b.Fatal(err)
		}
		freeImg = img
	})
	b.SetBytes(size)
	var cpu time.Duration
	for b.Loop() {
		dir, err := os.MkdirTemp("", "tart-bench")
		if err != nil {
			b.Fatal(err)
		}
		var r0, r1 syscall.Rusage
		syscall.Getrusage(syscall.RUSAGE_SELF, &r0)
		if err := unpack(b, freeImg, dir); err != nil {
			b.Fatal(err)
		}
		syscall.Getrusage(syscall.RUSAGE_SELF, &r1)
		cpu += time.Duration(r1.Utime.Nano() - r0.Utime.Nano() + r1.Stime.Nano() - r0.Stime.Nano())
		b.StopTimer()
		os.RemoveAll(dir)
		b.StartTimer()
	}
	b.ReportMetric(cpu.Seconds()/float64(b.N)/(size>>30), "cpu-s/GiB")
}

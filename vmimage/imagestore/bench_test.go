package imagestore_test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/macvz/macvz/integration/testimage"
	"github.com/macvz/macvz/integration/testregistry"
	"github.com/macvz/macvz/snapshotter"
	"github.com/macvz/macvz/vmimage/imagestore"
)

const (
	benchDiskSize    = 1 << 30
	benchChunkSize   = 64 << 20
	benchConcurrency = 4
	benchRepo        = "bench/tart"
)

// benchImage is the benchmark's Tart image, built and pushed once per
// process (the registry is stopped by TestMain).
var benchImage struct {
	once     sync.Once
	err      error
	reg      *testregistry.Registry
	ref      string
	blobs    []ocispec.Descriptor // config and layers
	wire     int64                // their total size
	setupDur time.Duration
}

func stopBenchRegistry() {
	if benchImage.reg != nil {
		benchImage.reg.Stop()
	}
}

func setupBenchImage() {
	start := time.Now()
	// DiskPattern (the default disk) is a used disk: about 40% zero runs
	// (holes), 25% random bytes (stored as uncompressed blocks) and 35%
	// text (compressed blocks).
	img, err := testimage.Tart(testimage.TartOptions{Seed: 42, DiskSize: benchDiskSize, ChunkSize: benchChunkSize})
	if err != nil {
		benchImage.err = err
		return
	}
	reg, err := testregistry.New(testregistry.Options{})
	if err != nil {
		benchImage.err = err
		return
	}
	benchImage.reg = reg
	if err := reg.Push(context.Background(), benchRepo, "v1", img); err != nil {
		benchImage.err = err
		return
	}
	m := img.Parsed()
	benchImage.blobs = append([]ocispec.Descriptor{m.Config}, m.Layers...)
	for _, d := range benchImage.blobs {
		benchImage.wire += d.Size
	}
	benchImage.ref = reg.Ref(benchRepo, "v1")
	benchImage.setupDur = time.Since(start)
}

// BenchmarkPullTart pulls a 1 GiB Tart image (16 chunks of 64 MiB) from
// the local test registry into a fresh store per iteration: download,
// digest checks, LZ4 decoding and the sparse disk write, 4 downloads at a
// time. As a baseline, each iteration also downloads the same blobs with
// plain net/http GETs, 4 at a time, into io.Discard (not timed as part of
// ns/op).
//
// Metrics: disk-MB/s is the unpacked disk's size over the pull's time;
// wire-MB/s and raw-MB/s are the blob bytes over the pull's and over the
// baseline's time; pull/raw is their ratio (1 means the pull costs
// nothing beyond moving the bytes); cpu-s/op is the process's CPU time
// (user and system) during the pull, the registry's serving included;
// stored-MB is what the pulled image takes on disk (allocated blocks of
// the content store and the unpacked base), chunks-MB the compressed
// chunks it would keep beside that with image.keep_disk_chunks.
func BenchmarkPullTart(b *testing.B) {
	benchImage.once.Do(setupBenchImage)
	if benchImage.err != nil {
		b.Fatal(benchImage.err)
	}
	if benchImage.setupDur > 0 {
		b.Logf("built and pushed the image (%d MiB of blobs) in %v", benchImage.wire>>20, benchImage.setupDur.Round(time.Millisecond))
		benchImage.setupDur = 0
	}
	reg := benchImage.reg
	client := &http.Client{Transport: &http.Transport{Proxy: nil, MaxIdleConnsPerHost: benchConcurrency}}
	defer client.CloseIdleConnections()

	var pullDur, rawDur, pullCPU time.Duration
	var stored int64
	b.ResetTimer()
	b.StopTimer()
	for i := 0; i < b.N; i++ {
		t0 := time.Now()
		if err := rawDownload(client, reg.URL()); err != nil {
			b.Fatal(err)
		}
		rawDur += time.Since(t0)

		root, err := os.MkdirTemp("", "imagestore-bench")
		if err != nil {
			b.Fatal(err)
		}
		sn, err := snapshotter.New(filepath.Join(root, "snapshots"))
		if err != nil {
			b.Fatal(err)
		}
		s, err := imagestore.Open(context.Background(), imagestore.Options{
			Root:                   filepath.Join(root, "images"),
			Snapshotter:            sn,
			Hosts:                  insecure(reg.Host()),
			MaxConcurrentDownloads: benchConcurrency,
		})
		if err != nil {
			b.Fatal(err)
		}

		var ru0, ru1 syscall.Rusage
		syscall.Getrusage(syscall.RUSAGE_SELF, &ru0)
		b.StartTimer()
		t1 := time.Now()
		img, err := s.Pull(context.Background(), benchImage.ref, nil)
		pullDur += time.Since(t1)
		b.StopTimer()
		syscall.Getrusage(syscall.RUSAGE_SELF, &ru1)
		pullCPU += time.Duration(ru1.Utime.Nano() - ru0.Utime.Nano() + ru1.Stime.Nano() - ru0.Stime.Nano())
		if err != nil {
			b.Fatal(err)
		}
		if !s.HasBase(context.Background(), img) {
			b.Fatal("no base after the pull")
		}
		stored = allocatedUnder(root)
		s.Close()
		sn.Close()
		os.RemoveAll(root)
	}
	n := float64(b.N)
	b.ReportMetric(n*benchDiskSize/1e6/pullDur.Seconds(), "disk-MB/s")
	b.ReportMetric(n*float64(benchImage.wire)/1e6/pullDur.Seconds(), "wire-MB/s")
	b.ReportMetric(n*float64(benchImage.wire)/1e6/rawDur.Seconds(), "raw-MB/s")
	b.ReportMetric(rawDur.Seconds()/pullDur.Seconds(), "pull/raw")
	b.ReportMetric(pullCPU.Seconds()/n, "cpu-s/op")
	b.ReportMetric(float64(stored)/1e6, "stored-MB")
	b.ReportMetric(float64(benchImage.wire)/1e6, "chunks-MB")
}

// allocatedUnder is the disk space the files under root take (their
// allocated blocks: holes and clones' shared extents not counted twice
// within a file).
func allocatedUnder(root string) int64 {
	var n int64
	filepath.Walk(root, func(p string, fi os.FileInfo, err error) error {
		if err == nil {
			if st, ok := fi.Sys().(*syscall.Stat_t); ok {
				n += st.Blocks * 512
			}
		}
		return nil
	})
	return n
}

// rawDownload GETs every blob of the bench image into io.Discard,
// benchConcurrency at a time.
func rawDownload(c *http.Client, base string) error {
	work := make(chan ocispec.Descriptor)
	errs := make(chan error, benchConcurrency)
	var wg sync.WaitGroup
	for range benchConcurrency {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var first error
			for d := range work {
				if first != nil {
					continue
				}
				resp, err := c.Get(base + "/v2/" + benchRepo + "/blobs/" + d.Digest.String())
				if err != nil {
					first = err
					continue
				}
				n, err := io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				switch {
				case err != nil:
					first = err
				case resp.StatusCode != http.StatusOK || n != d.Size:
					first = fmt.Errorf("GET %s: %s, %d of %d bytes", d.Digest, resp.Status, n, d.Size)
				}
			}
			errs <- first
		}()
	}
	for _, d := range benchImage.blobs {
		work <- d
	}
	close(work)
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}

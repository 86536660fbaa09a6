package imagestore_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
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
// process into a registry of its own: a child process (this test binary
// again, serveBenchRegistry), so that the pull's CPU time, read from
// getrusage of this process, is the puller's alone.
var benchImage struct {
	once     sync.Once
	err      error
	url      string
	ref      string
	blobs    []ocispec.Descriptor // config and layers
	wire     int64                // their total size
	setupDur time.Duration
	child    *exec.Cmd
}

const benchRegistryEnv = "MACVZ_BENCH_REGISTRY"

func stopBenchRegistry() {
	if c := benchImage.child; c != nil {
		c.Process.Kill()
		c.Wait()
	}
}

// benchRegistryInfo is what the child registry tells the benchmark.
type benchRegistryInfo struct {
	URL, Ref string
	Blobs    []ocispec.Descriptor
}

func setupBenchImage() {
	start := time.Now()
	cmd := exec.Command(os.Args[0])
	cmd.Env = append(os.Environ(), benchRegistryEnv+"=1")
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		benchImage.err = err
		return
	}
	if err := cmd.Start(); err != nil {
		benchImage.err = err
		return
	}
	benchImage.child = cmd
	var info benchRegistryInfo
	if err := json.NewDecoder(out).Decode(&info); err != nil {
		benchImage.err = fmt.Errorf("the bench registry: %w", err)
		return
	}
	benchImage.url, benchImage.ref, benchImage.blobs = info.URL, info.Ref, info.Blobs
	for _, d := range benchImage.blobs {
		benchImage.wire += d.Size
	}
	benchImage.setupDur = time.Since(start)
}

// serveBenchRegistry builds the image, pushes it to a registry it
// serves, prints benchRegistryInfo and serves until killed.
func serveBenchRegistry() int {
	// DiskPattern (the default disk) is a used disk: about 40% zero runs
	// (holes), 25% random bytes (stored as uncompressed blocks) and 35%
	// text (compressed blocks).
	img, err := testimage.Tart(testimage.TartOptions{Seed: 42, DiskSize: benchDiskSize, ChunkSize: benchChunkSize})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	reg, err := testregistry.New(testregistry.Options{})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	if err := reg.Push(context.Background(), benchRepo, "v1", img); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	m := img.Parsed()
	img = testimage.Image{} // the registry has it; free the GiB
	json.NewEncoder(os.Stdout).Encode(benchRegistryInfo{URL: reg.URL(), Ref: reg.Ref(benchRepo, "v1"), Blobs: append([]ocispec.Descriptor{m.Config}, m.Layers...)})
	select {}
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
// nothing beyond moving the bytes); cpu-s/op (and cpu-s/GiB, per GiB of
// disk written) is this process's CPU time (user and system) during the
// pull, the registry's serving not included (it is another process),
// raw-cpu-s/op the baseline's;
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
	client := &http.Client{Transport: &http.Transport{Proxy: nil, MaxIdleConnsPerHost: benchConcurrency}}
	defer client.CloseIdleConnections()

	var pullDur, rawDur, pullCPU, rawCPU time.Duration
	var stored int64
	b.ResetTimer()
	b.StopTimer()
	for i := 0; i < b.N; i++ {
		var r0, r1 syscall.Rusage
		syscall.Getrusage(syscall.RUSAGE_SELF, &r0)
		t0 := time.Now()
		if err := rawDownload(client, benchImage.url); err != nil {
			b.Fatal(err)
		}
		rawDur += time.Since(t0)
		syscall.Getrusage(syscall.RUSAGE_SELF, &r1)
		rawCPU += time.Duration(r1.Utime.Nano() - r0.Utime.Nano() + r1.Stime.Nano() - r0.Stime.Nano())

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
			Hosts:                  insecure(strings.TrimPrefix(benchImage.url, "http://")),
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
	b.ReportMetric(rawCPU.Seconds()/n, "raw-cpu-s/op")
	b.ReportMetric(pullCPU.Seconds()/n/(benchDiskSize/(1<<30)), "cpu-s/GiB")
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

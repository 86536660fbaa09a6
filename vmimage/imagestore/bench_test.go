package imagestore_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
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

	"github.com/opencontainers/go-digest"
	"github.com/opencontainers/image-spec/specs-go"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"golang.org/x/sync/errgroup"

	"github.com/macvz/macvz/integration/testimage"
	"github.com/macvz/macvz/integration/testregistry"
	"github.com/macvz/macvz/snapshotter"
	"github.com/macvz/macvz/vmimage"
	"github.com/macvz/macvz/vmimage/imagestore"
)

const (
	benchDiskSize    = 1 << 30
	benchChunkSize   = 64 << 20
	benchConcurrency = 4
	benchRepo        = "bench/tart"
)

// benchRegistry is a registry holding the benchmark's Tart image, built
// and pushed once per process into a registry of its own: a child process
// (this test binary again, serveBenchRegistry), so that the pull's CPU
// time, read from getrusage of this process, is the puller's alone.
type benchRegistry struct {
	once     sync.Once
	err      error
	url      string
	ref      string
	blobs    []ocispec.Descriptor // config and layers
	wire     int64                // their total size
	setupDur time.Duration
	child    *exec.Cmd
	stdin    io.WriteCloser // the child's: closing it stops the child
	// netns, for benchLink: the namespace the child runs in, removed with
	// its veth when the benchmarks end.
	netns string
}

var (
	// benchImage's registry is reached over loopback.
	benchImage benchRegistry
	// benchLink's runs in a network namespace behind a veth pair whose
	// registry end sends at most linkRate (tc tbf): a real link's
	// bandwidth, for BenchmarkPullTartLink.
	benchLink benchRegistry
	// benchFree's image is a disk mostly free (BenchmarkPullTartFreeSpace).
	benchFree benchRegistry
)

const (
	benchRegistryEnv     = "MACVZ_BENCH_REGISTRY"
	benchRegistryAddrEnv = "MACVZ_BENCH_REGISTRY_ADDR"
	linkRate             = "1gbit"
)

func stopBenchRegistry() {
	for _, r := range []*benchRegistry{&benchImage, &benchLink, &benchFree} {
		if c := r.child; c != nil {
			// Closing its stdin stops the child, which then removes its
			// registry's directory (400 MB of blobs); killed, it would
			// leave it behind, every run.
			r.stdin.Close()
			done := make(chan struct{})
			go func() { c.Wait(); close(done) }()
			select {
			case <-done:
			case <-time.After(30 * time.Second):
				c.Process.Kill()
				<-done
			}
		}
		if r.netns != "" {
			exec.Command("ip", "netns", "del", r.netns).Run()
		}
	}
}

// benchRegistryInfo is what the child registry tells the benchmark.
type benchRegistryInfo struct {
	URL, Ref string
	Blobs    []ocispec.Descriptor
}

func setupBenchImage() { benchImage.start(nil, "", "pattern") }

// setupBenchLink makes the shaped link and starts the registry behind it.
func setupBenchLink() {
	if os.Geteuid() != 0 {
		benchLink.err = errSkip("needs root (a network namespace and tc)")
		return
	}
	for _, tool := range []string{"ip", "tc"} {
		if _, err := exec.LookPath(tool); err != nil {
			benchLink.err = errSkip("needs " + tool + " (iproute2)")
			return
		}
	}
	id := os.Getpid() % 100000
	ns, host, peer := fmt.Sprintf("macvz-bench-%d", id), fmt.Sprintf("mvb%d", id), fmt.Sprintf("mvp%d", id)
	benchLink.netns = ns
	for _, args := range [][]string{
		{"ip", "netns", "add", ns},
		{"ip", "link", "add", host, "type", "veth", "peer", "name", peer},
		{"ip", "link", "set", peer, "netns", ns},
		{"ip", "addr", "add", "10.251.0.1/30", "dev", host},
		{"ip", "link", "set", host, "up"},
		{"ip", "-n", ns, "addr", "add", "10.251.0.2/30", "dev", peer},
		{"ip", "-n", ns, "link", "set", peer, "up"},
		{"ip", "-n", ns, "link", "set", "lo", "up"},
		// What the registry sends (the blobs) goes at linkRate.
		{"tc", "-n", ns, "qdisc", "add", "dev", peer, "root", "tbf", "rate", linkRate, "burst", "1mb", "latency", "50ms"},
	} {
		if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
			benchLink.err = fmt.Errorf("%s: %v: %s", strings.Join(args, " "), err, out)
			return
		}
	}
	benchLink.start([]string{"ip", "netns", "exec", ns}, "10.251.0.2:0", "pattern")
}

type errSkip string

func (e errSkip) Error() string { return string(e) }

// start runs the child registry (through wrap: ip netns exec) listening
// on addr ("" = loopback) with the disk kind names (serveBenchRegistry)
// and reads what it serves.
func (r *benchRegistry) start(wrap []string, addr, kind string) {
	start := time.Now()
	argv := append(wrap, os.Args[0])
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Env = append(os.Environ(), benchRegistryEnv+"="+kind, benchRegistryAddrEnv+"="+addr)
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		r.err = err
		return
	}
	if r.stdin, err = cmd.StdinPipe(); err != nil {
		r.err = err
		return
	}
	if err := cmd.Start(); err != nil {
		r.err = err
		return
	}
	r.child = cmd
	var info benchRegistryInfo
	if err := json.NewDecoder(out).Decode(&info); err != nil {
		r.err = fmt.Errorf("the bench registry: %w", err)
		return
	}
	r.url, r.ref, r.blobs = info.URL, info.Ref, info.Blobs
	for _, d := range r.blobs {
		r.wire += d.Size
	}
	r.setupDur = time.Since(start)
}

// serveBenchRegistry builds the image, pushes it to a registry it
// serves, prints benchRegistryInfo and serves until its stdin closes
// (stopBenchRegistry, or the benchmark process's end), then stops the
// registry, which removes its directory.
func serveBenchRegistry() int {
	// DiskPattern (the default disk) is a used disk: about 40% zero runs
	// (holes), 25% random bytes (stored as uncompressed blocks) and 35%
	// text (compressed blocks).
	opts := testimage.TartOptions{Seed: 42, DiskSize: benchDiskSize, ChunkSize: benchChunkSize}
	if os.Getenv(benchRegistryEnv) == "free" {
		// The first chunk used, the other fifteen free space (zeros: one
		// layer, as a macOS disk's free space is).
		opts.Disk = make([]byte, benchDiskSize)
		copy(opts.Disk, testimage.DiskPattern(42, benchChunkSize))
	}
	img, err := testimage.Tart(opts)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	reg, err := testregistry.New(testregistry.Options{Addr: os.Getenv(benchRegistryAddrEnv)})
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
	io.Copy(io.Discard, os.Stdin)
	reg.Stop()
	return 0
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
// raw-cpu-s/op the baseline's; floor-cpu-s/op is the CPU time of the
// passes a pull cannot leave out (floorPull: each blob downloaded
// straight into the image format's unpacker, its digest taken on the way)
// and cpu/floor the pull's CPU over it: what the content store, the
// resumable ingest and the pull's plumbing add; floor-MB/s and floor/raw
// are wire-MB/s and pull/raw for that floor (which decodes each blob as
// it reads it, with no queue in between, so through the link it is
// slower than the pull);
// stored-MB is what the pulled image takes on disk (allocated blocks of
// the content store and the unpacked base), chunks-MB the compressed
// chunks it would keep beside that with image.keep_disk_chunks.
func BenchmarkPullTart(b *testing.B) {
	benchImage.once.Do(setupBenchImage)
	benchPull(b, &benchImage)
}

// BenchmarkPullTartLink is BenchmarkPullTart from a registry behind a
// 1 Gbit/s link (a veth pair into a network namespace, shaped with tc
// tbf): pull/raw is then the pull's throughput against a download-only
// fetch of the same blobs through the same link, what a real registry
// gives. Needs root and iproute2.
func BenchmarkPullTartLink(b *testing.B) {
	benchLink.once.Do(setupBenchLink)
	var skip errSkip
	if errors.As(benchLink.err, &skip) {
		b.Skip(string(skip))
	}
	benchPull(b, &benchLink)
}

// BenchmarkPullTartFreeSpace is BenchmarkPullTart for a disk of which
// one 64 MiB chunk holds data and the other fifteen are free space
// (zeros, one layer digest), over loopback.
func BenchmarkPullTartFreeSpace(b *testing.B) {
	benchFree.once.Do(func() { benchFree.start(nil, "", "free") })
	benchPull(b, &benchFree)
}

func benchPull(b *testing.B, reg *benchRegistry) {
	if reg.err != nil {
		b.Fatal(reg.err)
	}
	if reg.setupDur > 0 {
		b.Logf("built and pushed the image (%d MiB of blobs) in %v", reg.wire>>20, reg.setupDur.Round(time.Millisecond))
		reg.setupDur = 0
	}
	client := &http.Client{Transport: &http.Transport{Proxy: nil, MaxIdleConnsPerHost: benchConcurrency}}
	defer client.CloseIdleConnections()

	var pullDur, rawDur, floorDur, pullCPU, rawCPU, floorCPU time.Duration
	var stored int64
	b.ResetTimer()
	b.StopTimer()
	for i := 0; i < b.N; i++ {
		var r0, r1 syscall.Rusage
		syscall.Getrusage(syscall.RUSAGE_SELF, &r0)
		t0 := time.Now()
		if err := rawDownload(client, reg.url, reg.blobs); err != nil {
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
			Hosts:                  insecure(strings.TrimPrefix(reg.url, "http://")),
			MaxConcurrentDownloads: benchConcurrency,
		})
		if err != nil {
			b.Fatal(err)
		}

		var ru0, ru1 syscall.Rusage
		syscall.Getrusage(syscall.RUSAGE_SELF, &ru0)
		b.StartTimer()
		t1 := time.Now()
		img, err := s.Pull(context.Background(), reg.ref, nil)
		pullDur += time.Since(t1)
		b.StopTimer()
		// The chunks' release goes on after Pull returns; its CPU is the
		// pull's all the same.
		s.WaitReleases()
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

		fdir, err := os.MkdirTemp("", "imagestore-bench-floor")
		if err != nil {
			b.Fatal(err)
		}
		syscall.Getrusage(syscall.RUSAGE_SELF, &r0)
		t2 := time.Now()
		err = floorPull(client, reg, fdir)
		floorDur += time.Since(t2)
		syscall.Getrusage(syscall.RUSAGE_SELF, &r1)
		floorCPU += time.Duration(r1.Utime.Nano() - r0.Utime.Nano() + r1.Stime.Nano() - r0.Stime.Nano())
		os.RemoveAll(fdir)
		if err != nil {
			b.Fatal(err)
		}
	}
	n := float64(b.N)
	b.ReportMetric(n*benchDiskSize/1e6/pullDur.Seconds(), "disk-MB/s")
	b.ReportMetric(n*float64(reg.wire)/1e6/pullDur.Seconds(), "wire-MB/s")
	b.ReportMetric(n*float64(reg.wire)/1e6/rawDur.Seconds(), "raw-MB/s")
	b.ReportMetric(rawDur.Seconds()/pullDur.Seconds(), "pull/raw")
	b.ReportMetric(pullCPU.Seconds()/n, "cpu-s/op")
	b.ReportMetric(rawCPU.Seconds()/n, "raw-cpu-s/op")
	b.ReportMetric(floorCPU.Seconds()/n, "floor-cpu-s/op")
	b.ReportMetric(pullCPU.Seconds()/floorCPU.Seconds(), "cpu/floor")
	b.ReportMetric(n*float64(reg.wire)/1e6/floorDur.Seconds(), "floor-MB/s")
	b.ReportMetric(rawDur.Seconds()/floorDur.Seconds(), "floor/raw")
	b.ReportMetric(pullCPU.Seconds()/n/(benchDiskSize/(1<<30)), "cpu-s/GiB")
	b.ReportMetric(float64(stored)/1e6, "stored-MB")
	b.ReportMetric(float64(reg.wire)/1e6, "chunks-MB")
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

// floorPull is a pull reduced to the passes over each byte that no pull
// can leave out: every blob downloaded (benchConcurrency at a time, as the
// pull does) straight into the VM format's unpacker, its SHA-256 taken on
// the way as the content store takes it; the unpacker decodes, checks the
// plain digests and writes the disk into dir. No content store, no
// resumable ingest, no queue between the download and the decoder.
func floorPull(c *http.Client, reg *benchRegistry, dir string) error {
	get := func(d ocispec.Descriptor, w io.Writer) error {
		resp, err := c.Get(reg.url + "/v2/" + benchRepo + "/blobs/" + d.Digest.String())
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("GET %s: %s", d.Digest, resp.Status)
		}
		h := digest.Canonical.Digester()
		buf := make([]byte, 1<<20)
		n, err := io.CopyBuffer(io.MultiWriter(h.Hash(), w), resp.Body, buf)
		if err != nil {
			return err
		}
		if n != d.Size || h.Digest() != d.Digest {
			return fmt.Errorf("GET %s: %d bytes of digest %s", d.Digest, n, h.Digest())
		}
		return nil
	}
	var cfg bytes.Buffer
	if err := get(reg.blobs[0], &cfg); err != nil {
		return err
	}
	m := ocispec.Manifest{Versioned: specs.Versioned{SchemaVersion: 2}, MediaType: ocispec.MediaTypeImageManifest,
		Config: reg.blobs[0], Layers: reg.blobs[1:]}
	f := vmimage.Detect(m)
	if f == nil {
		return fmt.Errorf("the bench image is not a VM image")
	}
	ctx := context.Background()
	u, err := f.NewUnpacker(ctx, m, cfg.Bytes(), dir, vmimage.Limits{})
	if err != nil {
		return err
	}
	var g errgroup.Group
	g.SetLimit(benchConcurrency)
	for i, l := range m.Layers {
		g.Go(func() error {
			w, err := u.Layer(i)
			if err != nil {
				return err
			}
			err = get(l, w)
			if cerr := w.Close(); err == nil {
				err = cerr
			}
			return err
		})
	}
	if err := g.Wait(); err != nil {
		u.Abort()
		return err
	}
	return u.Finish(ctx)
}

// rawDownload GETs every blob of the bench image into io.Discard,
// benchConcurrency at a time.
func rawDownload(c *http.Client, base string, blobs []ocispec.Descriptor) error {
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
	for _, d := range blobs {
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

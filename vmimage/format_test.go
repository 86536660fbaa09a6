package vmimage_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/macvz/macvz/integration/testimage"
	"github.com/macvz/macvz/vmimage"
)

func manifestOf(t testing.TB, img testimage.Image) ocispec.Manifest {
	t.Helper()
	var m ocispec.Manifest
	if err := json.Unmarshal(img.ManifestData, &m); err != nil {
		t.Fatal(err)
	}
	return m
}

func blobData(img testimage.Image, d digest.Digest) []byte {
	for _, b := range img.Blobs {
		if b.Desc.Digest == d {
			return b.Data
		}
	}
	return nil
}

// unpack drives an Unpacker as the image store does: every layer from
// its own goroutine, in 1 MiB writes, then Finish.
func unpack(t testing.TB, img testimage.Image, dir string) error {
	t.Helper()
	return unpackLimited(t, img, dir, vmimage.Limits{})
}

func unpackLimited(t testing.TB, img testimage.Image, dir string, lim vmimage.Limits) (retErr error) {
	t.Helper()
	m := manifestOf(t, img)
	f := vmimage.Detect(m)
	if f == nil {
		t.Fatal("no VM format detected")
	}
	u, err := f.NewUnpacker(context.Background(), m, blobData(img, m.Config.Digest), dir, lim)
	if err != nil {
		return err
	}
	defer func() {
		if retErr != nil {
			u.Abort()
		}
	}()
	errs := make([]error, len(m.Layers))
	var wg sync.WaitGroup
	for i, l := range m.Layers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			w, err := u.Layer(i)
			if err != nil {
				errs[i] = err
				return
			}
			data := blobData(img, l.Digest)
			var werr error
			for len(data) > 0 && werr == nil {
				n := min(len(data), 1<<20)
				_, werr = w.Write(data[:n])
				data = data[n:]
			}
			// A failed Write's error comes back from Close too.
			if errs[i] = w.Close(); errs[i] == nil {
				errs[i] = werr
			}
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return err
	}
	return u.Finish(context.Background())
}

// mustImage adapts a builder's two results for use in an expression.
func mustImage(t testing.TB) func(testimage.Image, error) testimage.Image {
	return func(img testimage.Image, err error) testimage.Image {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		return img
	}
}

func checkFile(t *testing.T, path string, want []byte) {
	t.Helper()
	got, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("%s: %d bytes differ from the %d expected", path, len(got), len(want))
	}
}

// checkSparse fails unless at least a quarter of the file is holes (the
// test disks are about 40% zeros).
func checkSparse(t *testing.T, path string) {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	st := fi.Sys().(*syscall.Stat_t)
	if alloc := st.Blocks * 512; alloc > fi.Size()*3/4 {
		t.Errorf("%s: %d of %d bytes allocated: not sparse", path, alloc, fi.Size())
	}
}

func TestDetect(t *testing.T) {
	oci := mustImage(t)(testimage.OCI(testimage.OCIOptions{}))
	if f := vmimage.Detect(manifestOf(t, oci)); f != nil {
		t.Fatalf("ordinary image detected as %s", f.Kind())
	}
	for kind, img := range map[vmimage.Kind]testimage.Image{
		vmimage.KindTart:  mustImage(t)(testimage.Tart(testimage.TartOptions{DiskSize: 1 << 20})),
		vmimage.KindAgoda: mustImage(t)(testimage.Agoda(testimage.AgodaOptions{DiskSize: 1 << 20})),
		vmimage.KindLinux: mustImage(t)(testimage.Linux(testimage.LinuxOptions{Kernel: []byte("\x7fELF")})),
	} {
		m := manifestOf(t, img)
		var matched []vmimage.Kind
		for _, f := range vmimage.Formats {
			if f.Match(m) {
				matched = append(matched, f.Kind())
			}
		}
		if len(matched) != 1 || matched[0] != kind {
			t.Errorf("%s image matches %v", kind, matched)
		}
	}
}

func TestTartUnpack(t *testing.T) {
	disk := testimage.DiskPattern(42, 20<<20+777)
	nvram := []byte("NVRAM contents")
	hw, id := []byte("bplist00 hardware model"), []byte("bplist00 ecid")
	img := mustImage(t)(testimage.Tart(testimage.TartOptions{
		Disk: disk, ChunkSize: 3<<20 + 12345, BlockSize: 50000,
		NVRAM: nvram, HardwareModel: hw, MachineID: id, CPUCount: 3, MemorySize: 5 << 30,
	}))
	if n := len(manifestOf(t, img).Layers); n != 2+7 {
		t.Fatalf("%d layers, want 7 chunks + config + nvram", n)
	}
	// The chunks' unaligned edges are shared blocks, written through the
	// cache while the rest goes direct (direct.go); on tmpfs (no direct
	// I/O) all of it goes through the cache.
	if shm, err := os.MkdirTemp("/dev/shm", "vmimage-test"); err == nil {
		t.Cleanup(func() { os.RemoveAll(shm) })
		if err := unpack(t, img, shm); err != nil {
			t.Fatal(err)
		}
		checkFile(t, filepath.Join(shm, vmimage.DiskFile), disk)
	}
	dir := t.TempDir()
	if err := unpack(t, img, dir); err != nil {
		t.Fatal(err)
	}
	checkFile(t, filepath.Join(dir, vmimage.DiskFile), disk)
	checkSparse(t, filepath.Join(dir, vmimage.DiskFile))
	checkFile(t, filepath.Join(dir, vmimage.NVRAMFile), nvram)
	d, err := vmimage.ReadDescriptor(dir)
	if err != nil {
		t.Fatal(err)
	}
	want := vmimage.Descriptor{
		Kind: vmimage.KindTart, OS: "darwin", Arch: "arm64",
		Disk: vmimage.DiskFile, NVRAM: vmimage.NVRAMFile,
		HardwareModel: hw, MachineID: id, MinCPUs: 3, MinMemoryBytes: 5 << 30,
		Display: "1024x768", MACAddress: d.MACAddress,
	}
	if fmt.Sprint(*d) != fmt.Sprint(want) || d.MACAddress == "" {
		t.Fatalf("descriptor\n%+v\nwant\n%+v", *d, want)
	}
}

func TestTartLinuxGuest(t *testing.T) {
	img := mustImage(t)(testimage.Tart(testimage.TartOptions{OS: "linux", DiskSize: 1 << 20}))
	dir := t.TempDir()
	if err := unpack(t, img, dir); err != nil {
		t.Fatal(err)
	}
	d, err := vmimage.ReadDescriptor(dir)
	if err != nil {
		t.Fatal(err)
	}
	if d.OS != "linux" || d.HardwareModel != nil || d.NVRAM != vmimage.NVRAMFile {
		t.Fatalf("%+v", d)
	}
}

func TestTartRefusals(t *testing.T) {
	base := func(o testimage.TartOptions) testimage.TartOptions {
		o.DiskSize, o.ChunkSize = 2<<20, 1<<20
		return o
	}
	edit := func(img testimage.Image, f func(m *ocispec.Manifest)) testimage.Image {
		m := manifestOf(t, img)
		f(&m)
		out, err := testimage.FromManifest(m, img.Blobs...)
		if err != nil {
			t.Fatal(err)
		}
		return out
	}
	plain := mustImage(t)(testimage.Tart(base(testimage.TartOptions{})))
	for name, tc := range map[string]struct {
		img  testimage.Image
		is   error
		text string
	}{
		"asif label": {
			mustImage(t)(testimage.Tart(base(testimage.TartOptions{DiskFormat: "asif"}))),
			errdefs.ErrNotImplemented, `"asif"`,
		},
		"truncated chunk": {
			mustImage(t)(testimage.Tart(base(testimage.TartOptions{TruncateChunks: []int{1}}))),
			errdefs.ErrDataLoss, "truncated",
		},
		"bad digest": {
			mustImage(t)(testimage.Tart(base(testimage.TartOptions{BadDigestChunks: []int{0}}))),
			errdefs.ErrDataLoss, "digest",
		},
		"disk v1": {
			edit(plain, func(m *ocispec.Manifest) { m.Layers[1].MediaType = vmimage.MediaTypeTartDiskV1 }),
			errdefs.ErrNotImplemented, vmimage.MediaTypeTartDiskV1,
		},
		"missing size": {
			edit(plain, func(m *ocispec.Manifest) {
				m.Layers[2].Annotations = map[string]string{vmimage.AnnotationTartUncompressedDigest: digest.FromString("").String()}
			}),
			errdefs.ErrInvalidArgument, vmimage.AnnotationTartUncompressedSize,
		},
		"size too small": {
			edit(plain, func(m *ocispec.Manifest) {
				m.Layers[1].Annotations[vmimage.AnnotationTartUncompressedSize] = "1000"
				delete(m.Annotations, vmimage.AnnotationTartUncompressedDiskSize)
			}),
			errdefs.ErrDataLoss, "larger than",
		},
		"no nvram": {
			edit(plain, func(m *ocispec.Manifest) { m.Layers = m.Layers[:len(m.Layers)-1] }),
			errdefs.ErrInvalidArgument, vmimage.MediaTypeTartNVRAM,
		},
	} {
		t.Run(name, func(t *testing.T) {
			err := unpack(t, tc.img, t.TempDir())
			t.Log(err)
			if !errors.Is(err, tc.is) || !strings.Contains(err.Error(), tc.text) {
				t.Fatalf("%v; want %v mentioning %q", err, tc.is, tc.text)
			}
		})
	}
}

func TestTartBadConfigLayer(t *testing.T) {
	img := mustImage(t)(testimage.Tart(testimage.TartOptions{DiskSize: 1 << 20}))
	m := manifestOf(t, img)
	for i, l := range m.Layers {
		if l.MediaType == vmimage.MediaTypeTartConfig {
			bad := testimage.NewBlob(l.MediaType, []byte(`{"version": 1, "os": "darwin", "cpuCount": "many"}`), nil)
			m.Layers[i] = bad.Desc
			img.Blobs = append(img.Blobs, bad)
		}
	}
	img, err := testimage.FromManifest(m, img.Blobs...)
	if err != nil {
		t.Fatal(err)
	}
	err = unpack(t, img, t.TempDir())
	if !errdefs.IsInvalidArgument(err) || !strings.Contains(err.Error(), vmimage.MediaTypeTartConfig) {
		t.Fatalf("%v", err)
	}
}

func TestAgodaUnpack(t *testing.T) {
	for _, uncompressed := range []bool{false, true} {
		disk := testimage.DiskPattern(7, 6<<20+3)
		aux := make([]byte, 2<<20)
		copy(aux[100:], "aux storage")
		img := mustImage(t)(testimage.Agoda(testimage.AgodaOptions{
			Disk: disk, Aux: aux, Uncompressed: uncompressed,
			HardwareModel: []byte("hw"), MachineID: []byte("id"),
		}))
		dir := t.TempDir()
		if err := unpack(t, img, dir); err != nil {
			t.Fatal(uncompressed, err)
		}
		checkFile(t, filepath.Join(dir, vmimage.DiskFile), disk)
		checkSparse(t, filepath.Join(dir, vmimage.DiskFile))
		checkFile(t, filepath.Join(dir, vmimage.AuxFile), aux)
		checkSparse(t, filepath.Join(dir, vmimage.AuxFile))
		d, err := vmimage.ReadDescriptor(dir)
		if err != nil {
			t.Fatal(err)
		}
		if d.Kind != vmimage.KindAgoda || d.OS != "darwin" || d.Arch != "arm64" || d.NVRAM != vmimage.AuxFile ||
			d.Disk != vmimage.DiskFile || string(d.HardwareModel) != "hw" || string(d.MachineID) != "id" {
			t.Fatalf("%+v", d)
		}
	}
	img := mustImage(t)(testimage.Agoda(testimage.AgodaOptions{DiskSize: 1 << 20, BadDigest: true}))
	if err := unpack(t, img, t.TempDir()); !errdefs.IsDataLoss(err) {
		t.Fatalf("bad digest: %v", err)
	}
}

func TestLinuxUnpack(t *testing.T) {
	kernel := []byte("\x7fELF pretend kernel")
	initrd := []byte("070701 pretend cpio")
	disk := testimage.DiskPattern(3, 4<<20)
	proc := &vmimage.Process{Entrypoint: []string{"/bin/sh"}, Cmd: []string{"-c", "echo hi"}, Env: []string{"A=b"}, WorkingDir: "/tmp", User: "1000"}
	for _, gz := range []bool{false, true} {
		img := mustImage(t)(testimage.Linux(testimage.LinuxOptions{
			Kernel: kernel, Initrd: initrd, Disk: disk, GzipDisk: gz,
			MinCPUs: 2, MinMemoryBytes: 256 << 20, KernelCmdline: "quiet", Process: proc,
		}))
		dir := t.TempDir()
		if err := unpack(t, img, dir); err != nil {
			t.Fatal(gz, err)
		}
		checkFile(t, filepath.Join(dir, vmimage.KernelFile), kernel)
		checkFile(t, filepath.Join(dir, vmimage.InitrdFile), initrd)
		checkFile(t, filepath.Join(dir, vmimage.DiskFile), disk)
		checkSparse(t, filepath.Join(dir, vmimage.DiskFile))
		d, err := vmimage.ReadDescriptor(dir)
		if err != nil {
			t.Fatal(err)
		}
		want := vmimage.Descriptor{
			Kind: vmimage.KindLinux, OS: "linux", Arch: "amd64", Disk: vmimage.DiskFile,
			Kernel: vmimage.KernelFile, Initrd: vmimage.InitrdFile, KernelCmdline: "quiet",
			MinCPUs: 2, MinMemoryBytes: 256 << 20,
		}
		got := *d
		got.Process = nil
		if fmt.Sprint(got) != fmt.Sprint(want) || d.Process == nil || fmt.Sprint(*d.Process) != fmt.Sprint(*proc) {
			t.Fatalf("%+v", d)
		}
		m := manifestOf(t, img)
		p, err := vmimage.DefaultProcess(vmimage.KindLinux, blobData(img, m.Config.Digest))
		if err != nil || fmt.Sprint(*p) != fmt.Sprint(*proc) {
			t.Fatalf("DefaultProcess: %+v %v", p, err)
		}
	}

	// Kernel only.
	img := mustImage(t)(testimage.Linux(testimage.LinuxOptions{Kernel: kernel, Arch: "arm64"}))
	dir := t.TempDir()
	if err := unpack(t, img, dir); err != nil {
		t.Fatal(err)
	}
	if d, err := vmimage.ReadDescriptor(dir); err != nil || d.Disk != "" || d.Initrd != "" || d.Arch != "arm64" {
		t.Fatalf("%+v %v", d, err)
	}
}

func TestLinuxBadConfig(t *testing.T) {
	for _, cfg := range []string{`{`, `{"os":"windows","arch":"amd64"}`, `{"os":"linux","arch":"mips"}`, `{"os":"linux","arch":"amd64","process":{"env":["=x"]}}`} {
		m := ocispec.Manifest{
			Config: ocispec.Descriptor{MediaType: vmimage.MediaTypeLinuxConfig},
			Layers: []ocispec.Descriptor{{MediaType: vmimage.MediaTypeLinuxKernel, Size: 1}},
		}
		_, err := vmimage.LinuxFormat{}.NewUnpacker(context.Background(), m, []byte(cfg), t.TempDir(), vmimage.Limits{})
		if !errdefs.IsInvalidArgument(err) || !strings.Contains(err.Error(), vmimage.MediaTypeLinuxConfig) {
			t.Errorf("%s: %v", cfg, err)
		}
	}
}

func TestAbortStopsDecoders(t *testing.T) {
	img := mustImage(t)(testimage.Linux(testimage.LinuxOptions{Kernel: []byte("k"), Disk: testimage.DiskPattern(1, 4<<20), GzipDisk: true}))
	m := manifestOf(t, img)
	dir := t.TempDir()
	u, err := vmimage.Detect(m).NewUnpacker(context.Background(), m, blobData(img, m.Config.Digest), dir, vmimage.Limits{})
	if err != nil {
		t.Fatal(err)
	}
	w, err := u.Layer(1)
	if err != nil {
		t.Fatal(err)
	}
	data := blobData(img, m.Layers[1].Digest)
	if _, err := w.Write(data[:len(data)/2]); err != nil {
		t.Fatal(err)
	}
	if _, err := u.Layer(1); !errdefs.IsFailedPrecondition(err) {
		t.Fatalf("second writer for one layer: %v", err)
	}
	if err := u.Finish(context.Background()); !errdefs.IsFailedPrecondition(err) {
		t.Fatalf("Finish with layers missing: %v", err)
	}
	done := make(chan struct{})
	go func() {
		u.Abort()
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Abort did not stop the gzip decoder")
	}
	if err := w.Close(); err == nil {
		t.Fatal("Close after Abort succeeded")
	}
}

// TestTartSameChunks: a disk's identical chunks (free space) are one
// layer digest; once one of them has decoded to zeros and passed its
// checks the others are not decoded again (their bytes could be anything
// here and the disk still comes out right), while identical chunks that
// hold data are each decoded.
func TestTartSameChunks(t *testing.T) {
	const chunk = 1 << 20
	data := testimage.DiskPattern(7, chunk)
	for i := range data[:16] {
		data[i] = byte(i + 1) // not all zeros, whatever the pattern
	}
	// data, zeros, data, zeros, zeros, data (the same chunk thrice).
	disk := bytes.Join([][]byte{data, make([]byte, chunk), data, make([]byte, 2*chunk), data}, nil)
	img := mustImage(t)(testimage.Tart(testimage.TartOptions{Disk: disk, ChunkSize: chunk}))
	m := manifestOf(t, img)
	var chunks []int
	for i, l := range m.Layers {
		if l.MediaType == vmimage.MediaTypeTartDiskV2 {
			chunks = append(chunks, i)
		}
	}
	if len(chunks) != 6 || m.Layers[chunks[1]].Digest != m.Layers[chunks[3]].Digest || m.Layers[chunks[0]].Digest != m.Layers[chunks[2]].Digest {
		t.Fatalf("chunks %v: want 6, the zero ones one digest, the data ones another", chunks)
	}

	// In order, one at a time: the later zero chunks get garbage.
	dir := t.TempDir()
	u, err := vmimage.Detect(m).NewUnpacker(context.Background(), m, blobData(img, m.Config.Digest), dir, vmimage.Limits{})
	if err != nil {
		t.Fatal(err)
	}
	write := func(i int, b []byte) error {
		w, err := u.Layer(i)
		if err != nil {
			return err
		}
		_, werr := w.Write(b)
		if err := w.Close(); err != nil {
			return err
		}
		return werr
	}
	for i := range m.Layers {
		b := blobData(img, m.Layers[i].Digest)
		if i == chunks[3] || i == chunks[4] {
			b = bytes.Repeat([]byte("not LZ4 "), 100)
		}
		if err := write(i, b); err != nil {
			t.Fatalf("layer %d: %v", i, err)
		}
	}
	if err := u.Finish(context.Background()); err != nil {
		t.Fatal(err)
	}
	checkFile(t, filepath.Join(dir, vmimage.DiskFile), disk)

	// A data chunk's twin is decoded: garbage for it fails.
	dir2 := t.TempDir()
	u, err = vmimage.Detect(m).NewUnpacker(context.Background(), m, blobData(img, m.Config.Digest), dir2, vmimage.Limits{})
	if err != nil {
		t.Fatal(err)
	}
	defer u.Abort()
	if err := write(chunks[0], blobData(img, m.Layers[chunks[0]].Digest)); err != nil {
		t.Fatal(err)
	}
	if err := write(chunks[2], bytes.Repeat([]byte("not LZ4 "), 100)); err == nil {
		t.Fatal("garbage for a data chunk's twin was accepted")
	}

	// A twin never waits for the first: written and closed before the
	// first gets a byte (its download may be the one the first's waits
	// for), it decodes on its own.
	dir3 := t.TempDir()
	u, err = vmimage.Detect(m).NewUnpacker(context.Background(), m, blobData(img, m.Config.Digest), dir3, vmimage.Limits{})
	if err != nil {
		t.Fatal(err)
	}
	defer u.Abort()
	zero := blobData(img, m.Layers[chunks[1]].Digest)
	w1, err := u.Layer(chunks[1])
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- write(chunks[3], zero) }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("the twin written first: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the twin waits for the first layer of its content")
	}
	// One that has begun when the first turns out zeros stops decoding:
	// the rest of its bytes are not read.
	w4, err := u.Layer(chunks[4])
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w4.Write(zero[:len(zero)/2]); err != nil {
		t.Fatal(err)
	}
	if _, err := w1.Write(zero); err != nil {
		t.Fatal(err)
	}
	if err := w1.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := w4.Write(bytes.Repeat([]byte("not LZ4 "), 100)); err != nil {
		t.Fatal(err)
	}
	if err := w4.Close(); err != nil {
		t.Fatalf("the twin that stopped decoding: %v", err)
	}
	for _, i := range []int{0, 2, 5} {
		if err := write(chunks[i], blobData(img, m.Layers[chunks[i]].Digest)); err != nil {
			t.Fatal(err)
		}
	}
	for i, l := range m.Layers {
		if l.MediaType != vmimage.MediaTypeTartDiskV2 {
			if err := write(i, blobData(img, l.Digest)); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := u.Finish(context.Background()); err != nil {
		t.Fatal(err)
	}
	checkFile(t, filepath.Join(dir3, vmimage.DiskFile), disk)

	// All at once, as a pull writes them.
	dir4 := t.TempDir()
	if err := unpack(t, img, dir4); err != nil {
		t.Fatal(err)
	}
	checkFile(t, filepath.Join(dir4, vmimage.DiskFile), disk)
}

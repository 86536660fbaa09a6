package vmimage_test

import (
	"bytes"
	"context"
	"os"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/containerd/errdefs"

	"github.com/macvz/macvz/integration/testimage"
	"github.com/macvz/macvz/vmimage"
)

// bombDisk is size bytes that compress to almost nothing: zeros, which
// become holes, then one repeating non-zero byte, which is written.
func bombDisk(size int) []byte {
	return append(make([]byte, size/2), bytes.Repeat([]byte{0xab}, size-size/2)...)
}

// withoutSizeAnnotations drops the uncompressed size and digest
// annotations of the layers of media type mediaType.
func withoutSizeAnnotations(t testing.TB, img testimage.Image, mediaType string) testimage.Image {
	t.Helper()
	m := manifestOf(t, img)
	for i := range m.Layers {
		if m.Layers[i].MediaType == mediaType {
			m.Layers[i].Annotations = nil
		}
	}
	out, err := testimage.FromManifest(m, img.Blobs...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// bombs are small images that unpack to 16 MiB, against a cap of 4 MiB.
func bombs(t testing.TB) map[string]testimage.Image {
	const size = 16 << 20
	gzipLinux := mustImage(t)(testimage.Linux(testimage.LinuxOptions{Kernel: []byte("k"), Disk: bombDisk(size), GzipDisk: true}))
	return map[string]testimage.Image{
		"tart": mustImage(t)(testimage.Tart(testimage.TartOptions{Disk: bombDisk(size), ChunkSize: 2 << 20})),
		// One chunk: the cap, not a sum of chunks, refuses it.
		"tart-one-chunk":     mustImage(t)(testimage.Tart(testimage.TartOptions{Disk: bombDisk(size), ChunkSize: size})),
		"linux-gzip-no-size": withoutSizeAnnotations(t, gzipLinux, vmimage.MediaTypeLinuxDiskGzip),
		"linux-gzip":         gzipLinux,
		"agoda-gzip":         mustImage(t)(testimage.Agoda(testimage.AgodaOptions{Disk: bombDisk(size)})),
	}
}

const bombCap = 4 << 20

func TestDecompressionBombs(t *testing.T) {
	for name, img := range bombs(t) {
		t.Run(name, func(t *testing.T) {
			m := manifestOf(t, img)
			var compressed int64
			for _, l := range m.Layers {
				compressed += l.Size
			}
			if compressed > bombCap/4 {
				t.Fatalf("the bomb is %d bytes compressed: not a bomb", compressed)
			}
			dir := t.TempDir()
			err := unpackLimited(t, img, dir, vmimage.Limits{MaxBytes: bombCap, Setting: "[image] max_unpacked_size"})
			t.Log(err)
			if !errdefs.IsInvalidArgument(err) || !strings.Contains(err.Error(), "4 MiB limit ([image] max_unpacked_size)") {
				t.Fatalf("unpack of a bomb against a cap: %v; want InvalidArgument naming the limit and its setting", err)
			}
			if !strings.Contains(err.Error(), "layer") {
				t.Errorf("error does not name the layer: %v", err)
			}
			if _, err := os.Stat(dir + "/" + vmimage.DescriptorFile); err == nil {
				t.Error("a descriptor was written")
			}
		})
	}
}

// The streaming cap counts holes: a gzip disk of zeros without a size
// annotation stops at the cap, though it writes nothing.
func TestCapCountsHoles(t *testing.T) {
	img := withoutSizeAnnotations(t, mustImage(t)(testimage.Linux(testimage.LinuxOptions{Kernel: []byte("k"), Disk: make([]byte, 16<<20), GzipDisk: true})), vmimage.MediaTypeLinuxDiskGzip)
	err := unpackLimited(t, img, t.TempDir(), vmimage.Limits{MaxBytes: bombCap})
	if !errdefs.IsInvalidArgument(err) || !strings.Contains(err.Error(), "unpacks to more than the 4 MiB limit") {
		t.Fatalf("%v", err)
	}
	// Kernel and disk count together: a cap of the disk's size exactly is
	// one byte short.
	img = withoutSizeAnnotations(t, mustImage(t)(testimage.Linux(testimage.LinuxOptions{Kernel: []byte("k"), Disk: make([]byte, 1<<20), GzipDisk: true})), vmimage.MediaTypeLinuxDiskGzip)
	if err := unpackLimited(t, img, t.TempDir(), vmimage.Limits{MaxBytes: 1 << 20}); !errdefs.IsInvalidArgument(err) {
		t.Fatalf("1 MiB disk and a 1-byte kernel under a 1 MiB cap: %v", err)
	}
	if err := unpackLimited(t, img, t.TempDir(), vmimage.Limits{MaxBytes: 1<<20 + 1}); err != nil {
		t.Fatalf("1 MiB disk and a 1-byte kernel under a cap of their size: %v", err)
	}
}

// Output beyond what an annotation declares is refused, whatever the cap.
func TestOutputBeyondDeclaredSize(t *testing.T) {
	for name, img := range bombs(t) {
		m := manifestOf(t, img)
		lied := false
		for i, l := range m.Layers {
			for _, k := range []string{vmimage.AnnotationTartUncompressedSize, vmimage.AnnotationLinuxUncompressedSize, vmimage.AnnotationAgodaUncompressedSize} {
				if _, ok := l.Annotations[k]; ok && (l.MediaType != vmimage.MediaTypeTartDiskV2 || !lied) {
					m.Layers[i].Annotations[k] = "65536"
					lied = true
				}
			}
		}
		if !lied {
			continue
		}
		delete(m.Annotations, vmimage.AnnotationTartUncompressedDiskSize)
		img, err := testimage.FromManifest(m, img.Blobs...)
		if err != nil {
			t.Fatal(err)
		}
		err = unpackLimited(t, img, t.TempDir(), vmimage.Limits{MaxBytes: 1 << 40})
		if !errdefs.IsDataLoss(err) || !strings.Contains(err.Error(), "larger than the 65536 bytes") {
			t.Errorf("%s with a lying size annotation: %v", name, err)
		}
	}
}

func TestFreeSpaceBeforeUnpack(t *testing.T) {
	for name, img := range bombs(t) {
		var calls atomic.Int32
		free := func(string) (uint64, uint64, error) {
			calls.Add(1)
			return 1 << 30, 100 << 30, nil // 1 GiB free of 100 GiB: below the 1 GiB margin plus anything
		}
		dir := t.TempDir()
		err := unpackLimited(t, img, dir, vmimage.Limits{FreeSpace: free})
		if !errdefs.IsResourceExhausted(err) || !strings.Contains(err.Error(), "not enough free space on "+dir) {
			t.Errorf("%s: %v", name, err)
		}
		if ents, _ := os.ReadDir(dir); len(ents) != 0 {
			t.Errorf("%s: %d files written before the refusal", name, len(ents))
		}
	}
}

func TestFreeSpaceWhileUnpacking(t *testing.T) {
	defer vmimage.SetSpaceCheckEvery(1 << 20)()
	for name, img := range bombs(t) {
		var calls atomic.Int32
		free := func(string) (uint64, uint64, error) {
			if calls.Add(1) == 1 {
				return 100 << 30, 200 << 30, nil // enough to start
			}
			return 2 << 30, 200 << 30, nil
		}
		// 2 GiB free stays above the 1 GiB margin: the unpack goes on.
		if err := unpackLimited(t, img, t.TempDir(), vmimage.Limits{FreeSpace: free}); err != nil {
			t.Fatalf("%s with free space to spare: %v", name, err)
		}
		if calls.Load() < 3 {
			t.Errorf("%s: free space checked %d times while unpacking 16 MiB", name, calls.Load())
		}
		calls.Store(0)
		free = func(string) (uint64, uint64, error) {
			if calls.Add(1) == 1 {
				return 100 << 30, 200 << 30, nil
			}
			return 512 << 20, 200 << 30, nil // another writer filled the disk
		}
		err := unpackLimited(t, img, t.TempDir(), vmimage.Limits{FreeSpace: free})
		if !errdefs.IsResourceExhausted(err) || !strings.Contains(err.Error(), "not enough free space") || !strings.Contains(err.Error(), "1 GiB must stay free") {
			t.Errorf("%s with the disk filling up: %v", name, err)
		}
	}
}

func TestDeclaredSizesOverCap(t *testing.T) {
	// Two chunks, each under the cap, over it together.
	img := mustImage(t)(testimage.Tart(testimage.TartOptions{DiskSize: 6 << 20, ChunkSize: 3 << 20}))
	dir := t.TempDir()
	err := unpackLimited(t, img, dir, vmimage.Limits{MaxBytes: bombCap})
	if !errdefs.IsInvalidArgument(err) || !strings.Contains(err.Error(), "declare more than the 4 MiB limit") {
		t.Fatalf("%v", err)
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 0 {
		t.Errorf("%d files written before the refusal", len(ents))
	}
	// A size annotation near MaxInt64 is refused by the cap, not by an
	// allocation or an overflow.
	m := manifestOf(t, img)
	for i, l := range m.Layers {
		if l.MediaType == vmimage.MediaTypeTartDiskV2 {
			m.Layers[i].Annotations[vmimage.AnnotationTartUncompressedSize] = "9223372036854775807"
		}
	}
	delete(m.Annotations, vmimage.AnnotationTartUncompressedDiskSize)
	img, err = testimage.FromManifest(m, img.Blobs...)
	if err != nil {
		t.Fatal(err)
	}
	err = unpackLimited(t, img, t.TempDir(), vmimage.Limits{})
	if !errdefs.IsInvalidArgument(err) || !strings.Contains(err.Error(), "200 GiB limit") {
		t.Fatalf("%v", err)
	}
}

// VM disks are sparse: an image whose announced disk is larger than the
// free space, but whose data fits, unpacks (its holes take no space).
func TestFreeSpaceSparseDisk(t *testing.T) {
	const size = 64 << 20
	img := mustImage(t)(testimage.Tart(testimage.TartOptions{Disk: make([]byte, size), ChunkSize: 8 << 20}))
	free := func(string) (uint64, uint64, error) {
		return 1<<30 + 16<<20, 100 << 30, nil // 16 MiB above the margin, for a 64 MiB disk
	}
	if err := unpackLimited(t, img, t.TempDir(), vmimage.Limits{FreeSpace: free}); err != nil {
		t.Fatalf("a sparse 64 MiB disk with 16 MiB to spare: %v", err)
	}
}

// A resumed unpack needs free space for what it has left to download
// only: the chunks the interrupted one holds (Limits.Held) are on the
// disk already.
func TestFreeSpaceBeforeResume(t *testing.T) {
	img := mustImage(t)(testimage.Tart(testimage.TartOptions{Seed: 21, Disk: testimage.DiskPattern(21, 4<<20), ChunkSize: 1 << 20}))
	m := manifestOf(t, img)
	rf := vmimage.Detect(m).(vmimage.ResumableFormat)
	var all, rest int64
	var held []int
	for i, l := range m.Layers {
		all += l.Size
		if l.MediaType == vmimage.MediaTypeTartDiskV2 && len(held) < 3 {
			held = append(held, i)
		} else {
			rest += l.Size
		}
	}
	if len(held) != 3 || rest >= all {
		t.Fatalf("image layers: %d chunks held, %d of %d bytes left", len(held), rest, all)
	}
	// The 1 GiB margin and exactly what is left.
	free := func(string) (uint64, uint64, error) { return 1<<30 + uint64(rest), 100 << 30, nil }
	dir := t.TempDir()
	un, err := rf.ResumeUnpacker(context.Background(), m, blobData(img, m.Config.Digest), dir, vmimage.Limits{FreeSpace: free, Held: held})
	if err != nil {
		t.Fatalf("resuming with room for the rest: %v", err)
	}
	un.Abort()
	// One byte less, and the refusal says what it counted.
	free = func(string) (uint64, uint64, error) { return 1<<30 + uint64(rest) - 1, 100 << 30, nil }
	_, err = rf.ResumeUnpacker(context.Background(), m, blobData(img, m.Config.Digest), dir, vmimage.Limits{FreeSpace: free, Held: held})
	if !errdefs.IsResourceExhausted(err) || !strings.Contains(err.Error(), "more than the interrupted pull it resumes unpacked") {
		t.Errorf("resuming without room for the rest: %v", err)
	}
	// Without the held chunks the whole image counts.
	free = func(string) (uint64, uint64, error) { return 1<<30 + uint64(rest), 100 << 30, nil }
	_, err = rf.ResumeUnpacker(context.Background(), m, blobData(img, m.Config.Digest), dir, vmimage.Limits{FreeSpace: free})
	if !errdefs.IsResourceExhausted(err) || strings.Contains(err.Error(), "interrupted") {
		t.Errorf("resuming with nothing held: %v", err)
	}
}

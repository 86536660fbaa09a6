package vmimage_test

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/macvz/macvz/integration/testimage"
	"github.com/macvz/macvz/vmimage"
)

// The fuzzers build a manifest of one format around arbitrary layer bytes
// and annotations, and drive its Unpacker the way the image store does:
// NewUnpacker, every layer's writer, Finish (Abort after a failure). No
// input may panic, write more than the cap, or fail with an error of no
// errdefs class.

const fuzzCap = 1 << 20

// fuzzLayer is one layer of a fuzzed manifest. Its descriptor's size and
// digest are those of data, as a pull guarantees.
type fuzzLayer struct {
	mediaType   string
	data        []byte
	annotations map[string]string
}

// annotate adds key=value to a, unless value is empty (the fuzzer's way
// of leaving an annotation out).
func annotate(a map[string]string, kv ...string) map[string]string {
	for i := 0; i+1 < len(kv); i += 2 {
		if kv[i+1] != "" {
			if a == nil {
				a = map[string]string{}
			}
			a[kv[i]] = kv[i+1]
		}
	}
	return a
}

func runUnpacker(t *testing.T, f vmimage.Format, m ocispec.Manifest, config []byte, layers []fuzzLayer) {
	for _, l := range layers {
		m.Layers = append(m.Layers, ocispec.Descriptor{
			MediaType:   l.mediaType,
			Digest:      digest.FromBytes(l.data),
			Size:        int64(len(l.data)),
			Annotations: l.annotations,
		})
	}
	dir := fuzzDir(t)
	lim := vmimage.Limits{MaxBytes: fuzzCap, FreeSpace: func(string) (uint64, uint64, error) { return 1 << 40, 1 << 41, nil }}
	err := func() error {
		u, err := f.NewUnpacker(context.Background(), m, config, dir, lim)
		if err != nil {
			return err
		}
		for i, l := range layers {
			w, err := u.Layer(i)
			if err != nil {
				u.Abort()
				return err
			}
			// In pieces, as a download arrives.
			var werr error
			for data := l.data; len(data) > 0 && werr == nil; {
				n := min(len(data), 1000)
				_, werr = w.Write(data[:n])
				data = data[n:]
			}
			if err := w.Close(); err != nil || werr != nil {
				u.Abort()
				if err == nil {
					err = werr
				}
				return err
			}
		}
		if err := u.Finish(context.Background()); err != nil {
			u.Abort()
			return err
		}
		if _, err := vmimage.ReadDescriptor(dir); err != nil {
			t.Fatalf("Finish succeeded but the descriptor does not read back: %v", err)
		}
		return nil
	}()
	if err != nil && !(errdefs.IsInvalidArgument(err) || errdefs.IsNotImplemented(err) || errdefs.IsDataLoss(err) ||
		errdefs.IsResourceExhausted(err) || errdefs.IsFailedPrecondition(err)) {
		t.Fatalf("error of no class: %v", err)
	}
	var total int64
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		if e.Name() == vmimage.DescriptorFile {
			continue
		}
		fi, err := os.Stat(filepath.Join(dir, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		total += fi.Size()
	}
	if total > fuzzCap {
		t.Fatalf("%d bytes unpacked under a cap of %d (error: %v)", total, fuzzCap, err)
	}
}

// fuzzDir is a new directory for one run, in memory where the system
// has a tmpfs: the unpackers fsync what they write, which dominates a run
// on a busy disk.
func fuzzDir(t *testing.T) string {
	if fi, err := os.Stat("/dev/shm"); err == nil && fi.IsDir() {
		if dir, err := os.MkdirTemp("/dev/shm", "macvz-fuzz-"); err == nil {
			t.Cleanup(func() { os.RemoveAll(dir) })
			return dir
		}
	}
	return t.TempDir()
}

// layerSeeds returns the layers of a built image, in manifest order.
func layerSeeds(t testing.TB, img testimage.Image) (ocispec.Manifest, []fuzzLayer) {
	m := manifestOf(t, img)
	var out []fuzzLayer
	for _, l := range m.Layers {
		out = append(out, fuzzLayer{l.MediaType, blobData(img, l.Digest), l.Annotations})
	}
	return m, out
}

func FuzzTartUnpack(f *testing.F) {
	ociConfig := func(img testimage.Image) []byte { return blobData(img, manifestOf(f, img).Config.Digest) }
	add := func(img testimage.Image) {
		_, ls := layerSeeds(f, img)
		if len(ls) != 4 {
			f.Fatalf("%d layers, want config, two chunks, nvram", len(ls))
		}
		a1, a2 := ls[1].annotations, ls[2].annotations
		f.Add(ociConfig(img), ls[0].data,
			ls[1].data, a1[vmimage.AnnotationTartUncompressedSize], a1[vmimage.AnnotationTartUncompressedDigest],
			ls[2].data, a2[vmimage.AnnotationTartUncompressedSize], a2[vmimage.AnnotationTartUncompressedDigest],
			ls[3].data)
	}
	add(mustImage(f)(testimage.Tart(testimage.TartOptions{DiskSize: 8 << 10, ChunkSize: 4 << 10, BlockSize: 1024, NVRAM: []byte("nvram")})))
	add(mustImage(f)(testimage.Tart(testimage.TartOptions{OS: "linux", DiskSize: 20000, ChunkSize: 12345, BlockSize: 1000, NVRAM: []byte("efi")})))
	// Zeros and a repeated byte: 2 MiB from a few KiB, over the cap.
	add(mustImage(f)(testimage.Tart(testimage.TartOptions{Disk: bombDisk(2 << 20), ChunkSize: 1 << 20, NVRAM: []byte("n")})))
	f.Fuzz(func(t *testing.T, ociConfig, vmConfig, chunk1 []byte, size1, digest1 string, chunk2 []byte, size2, digest2 string, nvram []byte) {
		runUnpacker(t, vmimage.TartFormat{}, ocispec.Manifest{}, ociConfig, []fuzzLayer{
			{vmimage.MediaTypeTartConfig, vmConfig, nil},
			{vmimage.MediaTypeTartDiskV2, chunk1, annotate(nil, vmimage.AnnotationTartUncompressedSize, size1, vmimage.AnnotationTartUncompressedDigest, digest1)},
			{vmimage.MediaTypeTartDiskV2, chunk2, annotate(nil, vmimage.AnnotationTartUncompressedSize, size2, vmimage.AnnotationTartUncompressedDigest, digest2)},
			{vmimage.MediaTypeTartNVRAM, nvram, nil},
		})
	})
}

func FuzzAgodaUnpack(f *testing.F) {
	add := func(img testimage.Image) {
		_, ls := layerSeeds(f, img)
		if len(ls) != 3 || ls[0].mediaType != vmimage.MediaTypeAgodaDisk || ls[1].mediaType != vmimage.MediaTypeAgodaAux {
			f.Fatalf("layers %+v, want disk, aux, config", ls)
		}
		d, a := ls[0].annotations, ls[1].annotations
		f.Add(ls[0].data, d[vmimage.AnnotationAgodaUncompressedSize], d[vmimage.AnnotationAgodaUncompressedDigest],
			ls[1].data, a[vmimage.AnnotationAgodaUncompressedSize], a[vmimage.AnnotationAgodaUncompressedDigest],
			ls[2].data)
	}
	add(mustImage(f)(testimage.Agoda(testimage.AgodaOptions{DiskSize: 8 << 10, Aux: []byte("aux")})))
	add(mustImage(f)(testimage.Agoda(testimage.AgodaOptions{DiskSize: 3000, Aux: make([]byte, 5000), Uncompressed: true})))
	add(mustImage(f)(testimage.Agoda(testimage.AgodaOptions{Disk: bombDisk(2 << 20), Aux: []byte("aux")})))
	f.Fuzz(func(t *testing.T, disk []byte, diskSize, diskDigest string, aux []byte, auxSize, auxDigest string, config []byte) {
		runUnpacker(t, vmimage.AgodaFormat{}, ocispec.Manifest{ArtifactType: vmimage.ArtifactTypeAgoda}, []byte("{}"), []fuzzLayer{
			{vmimage.MediaTypeAgodaDisk, disk, annotate(nil, vmimage.AnnotationAgodaUncompressedSize, diskSize, vmimage.AnnotationAgodaUncompressedDigest, diskDigest)},
			{vmimage.MediaTypeAgodaAux, aux, annotate(nil, vmimage.AnnotationAgodaUncompressedSize, auxSize, vmimage.AnnotationAgodaUncompressedDigest, auxDigest)},
			{vmimage.MediaTypeAgodaConfig, config, nil},
		})
	})
}

func FuzzLinuxUnpack(f *testing.F) {
	add := func(img testimage.Image, gzip bool) {
		m, ls := layerSeeds(f, img)
		config := blobData(img, m.Config.Digest)
		var kernel, initrd, disk []byte
		var size, dg string
		for _, l := range ls {
			switch l.mediaType {
			case vmimage.MediaTypeLinuxKernel:
				kernel = l.data
			case vmimage.MediaTypeLinuxInitrd:
				initrd = l.data
			default:
				disk = l.data
				size, dg = l.annotations[vmimage.AnnotationLinuxUncompressedSize], l.annotations[vmimage.AnnotationLinuxUncompressedDigest]
			}
		}
		f.Add(config, kernel, initrd, disk, gzip, size, dg)
	}
	opts := testimage.LinuxOptions{Kernel: []byte("\x7fELF"), Initrd: []byte("070701"), Disk: testimage.DiskPattern(1, 8000)}
	add(mustImage(f)(testimage.Linux(opts)), false)
	opts.GzipDisk = true
	add(mustImage(f)(testimage.Linux(opts)), true)
	opts.Disk = bombDisk(2 << 20)
	add(mustImage(f)(testimage.Linux(opts)), true)
	f.Fuzz(func(t *testing.T, config, kernel, initrd, disk []byte, gzip bool, size, dg string) {
		layers := []fuzzLayer{{vmimage.MediaTypeLinuxKernel, kernel, nil}}
		if len(initrd) > 0 {
			layers = append(layers, fuzzLayer{vmimage.MediaTypeLinuxInitrd, initrd, nil})
		}
		if len(disk) > 0 {
			mt := vmimage.MediaTypeLinuxDisk
			if gzip {
				mt = vmimage.MediaTypeLinuxDiskGzip
			}
			layers = append(layers, fuzzLayer{mt, disk, annotate(nil, vmimage.AnnotationLinuxUncompressedSize, size, vmimage.AnnotationLinuxUncompressedDigest, dg)})
		}
		m := ocispec.Manifest{Config: ocispec.Descriptor{MediaType: vmimage.MediaTypeLinuxConfig}}
		runUnpacker(t, vmimage.LinuxFormat{}, m, config, layers)
	})
}

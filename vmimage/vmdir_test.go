package vmimage_test

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/macvz/macvz/integration/testimage"
	"github.com/macvz/macvz/vmimage"
)

const testChunk = 1 << 20

// tartDirFiles is a Tart VM directory of 3.5 chunks: data in the first
// and third, the second all holes.
func tartDirFiles(t testing.TB, osName string) testimage.VMDir {
	t.Helper()
	v, err := testimage.TartDir(7, osName, 3*testChunk+testChunk/2, map[int64][]byte{
		4096:                      testimage.DiskPattern(1, 64<<10),
		2*testChunk + 123:         testimage.DiskPattern(2, 100<<10),
		3*testChunk + testChunk/4: []byte("the last chunk is short"),
	})
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func writeDir(t testing.TB, v testimage.VMDir, dir string) {
	t.Helper()
	if err := v.Write(dir); err != nil {
		t.Fatal(err)
	}
}

// packDir opens and packs a VM directory written from f, as import does:
// the files copied into a base first.
func packDir(t testing.TB, f testimage.VMDir) (*vmimage.VMDir, *vmimage.Packed, string) {
	t.Helper()
	src, base := t.TempDir(), t.TempDir()
	writeDir(t, f, src)
	v, err := vmimage.OpenDir(src)
	if err != nil {
		t.Fatal(err)
	}
	writeDir(t, f, base)
	os.Remove(filepath.Join(base, vmimage.ConfigFile))
	p, err := v.Pack(context.Background(), base, 2, nil)
	if err != nil {
		t.Fatal(err)
	}
	return v, p, base
}

// layerBytes is a packed layer's blob: kept, or made again from base.
func layerBytes(t testing.TB, p *vmimage.Packed, i int, base string) []byte {
	t.Helper()
	l := p.Manifest.Layers[i]
	if b, ok := p.Blobs[l.Digest]; ok {
		return b
	}
	var buf bytes.Buffer
	if err := vmimage.RemakeLayer(context.Background(), p.Manifest, i, base, &buf); err != nil {
		t.Fatal(err)
	}
	if got := digest.FromBytes(buf.Bytes()); got != l.Digest || int64(buf.Len()) != l.Size {
		t.Fatalf("layer %d made again: %s, %d bytes; the manifest says %s, %d", i, got, buf.Len(), l.Digest, l.Size)
	}
	return buf.Bytes()
}

// unpackPacked runs the format's own unpacker over a packed image, as a pull
// of it would.
func unpackPacked(t testing.TB, p *vmimage.Packed, base string) string {
	t.Helper()
	dir := t.TempDir()
	format := vmimage.Detect(p.Manifest)
	if format == nil || format.Kind() != p.Kind {
		t.Fatalf("packed manifest detected as %v, want %s", format, p.Kind)
	}
	u, err := format.NewUnpacker(context.Background(), p.Manifest, p.Blobs[p.Manifest.Config.Digest], dir, vmimage.Limits{})
	if err != nil {
		t.Fatal(err)
	}
	for i := range p.Manifest.Layers {
		w, err := u.Layer(i)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := w.Write(layerBytes(t, p, i, base)); err != nil {
			t.Fatal(err)
		}
		if err := w.Close(); err != nil {
			t.Fatalf("layer %d: %v", i, err)
		}
	}
	if err := u.Finish(context.Background()); err != nil {
		t.Fatal(err)
	}
	return dir
}

func TestPackTartDir(t *testing.T) {
	defer vmimage.SetTartChunkSize(testChunk)()
	f := tartDirFiles(t, "darwin")
	v, p, base := packDir(t, f)
	if v.Kind != vmimage.KindTart || p.Kind != vmimage.KindTart {
		t.Fatalf("kind %s/%s, want tart", v.Kind, p.Kind)
	}
	m := p.Manifest
	var chunks []ocispec.Descriptor
	for _, l := range m.Layers {
		if l.MediaType == vmimage.MediaTypeTartDiskV2 {
			chunks = append(chunks, l)
		}
	}
	if len(chunks) != 4 || m.Layers[0].MediaType != vmimage.MediaTypeTartConfig || m.Layers[len(m.Layers)-1].MediaType != vmimage.MediaTypeTartNVRAM {
		t.Fatalf("layers %+v: want config, 4 chunks, nvram", m.Layers)
	}
	if got := m.Annotations[vmimage.AnnotationTartUncompressedDiskSize]; got != "3670016" {
		t.Errorf("uncompressed-disk-size %q, want 3670016", got)
	}
	// Tart's disk layers are described by what they hold.
	disk := f.Disk()
	for i, c := range chunks {
		want := disk[int64(i)*testChunk : min(int64(i+1)*testChunk, f.DiskSize)]
		if c.Annotations[vmimage.AnnotationTartUncompressedDigest] != digest.FromBytes(want).String() {
			t.Errorf("chunk %d: content digest %s, want %s", i, c.Annotations[vmimage.AnnotationTartUncompressedDigest], digest.FromBytes(want))
		}
	}
	// The hole chunk is the same layer as a chunk of written zeros.
	zero := testimage.VMDir{Config: f.Config, Files: f.Files, DiskSize: testChunk, Extents: map[int64][]byte{0: make([]byte, testChunk)}}
	_, zp, _ := packDir(t, zero)
	if zc := zp.Manifest.Layers[1]; zc.Digest != chunks[1].Digest || zc.Size != chunks[1].Size {
		t.Errorf("hole chunk %s/%d, written zeros %s/%d", chunks[1].Digest, chunks[1].Size, zc.Digest, zc.Size)
	}
	// The same files make the same image.
	_, again, _ := packDir(t, f)
	mb1, _ := json.Marshal(p.Manifest)
	mb2, _ := json.Marshal(again.Manifest)
	if !bytes.Equal(mb1, mb2) {
		t.Errorf("packing twice made two manifests:\n%s\n%s", mb1, mb2)
	}
	// Tart's unpacker (a pull's) gives back the disk and NVRAM.
	dir := unpackPacked(t, p, base)
	got, err := os.ReadFile(filepath.Join(dir, vmimage.DiskFile))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, disk) {
		t.Error("the unpacked disk differs from the directory's")
	}
	nv, _ := os.ReadFile(filepath.Join(dir, vmimage.NVRAMFile))
	if !bytes.Equal(nv, f.Files[vmimage.NVRAMFile]) {
		t.Error("the unpacked NVRAM differs")
	}
	d1, err := vmimage.ReadDescriptor(base)
	if err != nil {
		t.Fatal(err)
	}
	d2, err := vmimage.ReadDescriptor(dir)
	if err != nil {
		t.Fatal(err)
	}
	j1, _ := json.Marshal(d1)
	j2, _ := json.Marshal(d2)
	if !bytes.Equal(j1, j2) {
		t.Errorf("the imported base's vm.json\n%s\ndiffers from the pulled one's\n%s", j1, j2)
	}
}

func TestRemakeLayerNoticesChangedBase(t *testing.T) {
	defer vmimage.SetTartChunkSize(testChunk)()
	_, p, base := packDir(t, tartDirFiles(t, "linux"))
	disk, err := os.OpenFile(filepath.Join(base, vmimage.DiskFile), os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := disk.WriteAt([]byte("changed"), 2*testChunk+200); err != nil {
		t.Fatal(err)
	}
	disk.Close()
	if err := vmimage.RemakeLayer(context.Background(), p.Manifest, 3, base, io.Discard); !errdefs.IsDataLoss(err) {
		t.Errorf("remaking a chunk of a changed base: %v, want DataLoss", err)
	}
	// The other chunks still come out as they were.
	layerBytes(t, p, 1, base)
}

func TestPackAgodaDir(t *testing.T) {
	img, err := testimage.Agoda(testimage.AgodaOptions{Seed: 3})
	if err != nil {
		t.Fatal(err)
	}
	m := manifestOf(t, img)
	f := testimage.VMDir{Files: map[string][]byte{}, DiskSize: 2 << 20, Extents: map[int64][]byte{8192: testimage.DiskPattern(4, 4096)}}
	for _, l := range m.Layers {
		if l.MediaType == vmimage.MediaTypeAgodaConfig {
			f.Config = blobData(img, l.Digest)
		}
	}
	f.Files[vmimage.AuxFile] = bytes.Repeat([]byte{0, 1, 2, 3}, 1<<16)
	_, p, base := packDir(t, f)
	if p.Manifest.ArtifactType != vmimage.ArtifactTypeAgoda || p.Manifest.Config.Platform == nil || p.Manifest.Config.Platform.OS != "darwin" {
		t.Errorf("manifest %+v: want the agoda artifact type and a darwin config", p.Manifest)
	}
	dir := unpackPacked(t, p, base)
	got, _ := os.ReadFile(filepath.Join(dir, vmimage.DiskFile))
	if !bytes.Equal(got, f.Disk()) {
		t.Error("the unpacked disk differs from the directory's")
	}
	aux, _ := os.ReadFile(filepath.Join(dir, vmimage.AuxFile))
	if !bytes.Equal(aux, f.Files[vmimage.AuxFile]) {
		t.Error("the unpacked aux.img differs")
	}
}

func TestOpenDirRefuses(t *testing.T) {
	tart := tartDirFiles(t, "darwin")
	cases := []struct {
		name   string
		change func(t *testing.T, dir string)
		code   func(error) bool
		msg    string
	}{
		{"symlinked disk", func(t *testing.T, dir string) {
			os.Remove(filepath.Join(dir, vmimage.DiskFile))
			if err := os.Symlink("/etc/passwd", filepath.Join(dir, vmimage.DiskFile)); err != nil {
				t.Fatal(err)
			}
		}, errdefs.IsInvalidArgument, "not a regular file"},
		{"symlinked config", func(t *testing.T, dir string) {
			os.Rename(filepath.Join(dir, vmimage.ConfigFile), filepath.Join(dir, "real.json"))
			os.Symlink("real.json", filepath.Join(dir, vmimage.ConfigFile))
		}, errdefs.IsInvalidArgument, "not a regular file"},
		{"no nvram", func(t *testing.T, dir string) {
			os.Remove(filepath.Join(dir, vmimage.NVRAMFile))
		}, errdefs.IsInvalidArgument, "missing"},
		{"asif disk", func(t *testing.T, dir string) {
			rewriteConfig(t, dir, func(c map[string]any) { c["diskFormat"] = "asif" })
		}, errdefs.IsNotImplemented, "asif"},
		{"no cpus", func(t *testing.T, dir string) {
			rewriteConfig(t, dir, func(c map[string]any) { c["cpuCount"] = 0 })
		}, errdefs.IsInvalidArgument, "cpuCount"},
		{"not a VM", func(t *testing.T, dir string) {
			os.WriteFile(filepath.Join(dir, vmimage.ConfigFile), []byte(`{"name": "x"}`), 0o644)
		}, errdefs.IsInvalidArgument, "neither a Tart VM directory"},
		{"not JSON", func(t *testing.T, dir string) {
			os.WriteFile(filepath.Join(dir, vmimage.ConfigFile), []byte(`version: 1`), 0o644)
		}, errdefs.IsInvalidArgument, "not JSON"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			writeDir(t, tart, dir)
			c.change(t, dir)
			_, err := vmimage.OpenDir(dir)
			if !c.code(err) || !strings.Contains(err.Error(), c.msg) {
				t.Errorf("OpenDir: %v; want a %q error of the right code", err, c.msg)
			}
		})
	}
}

func rewriteConfig(t *testing.T, dir string, f func(map[string]any)) {
	t.Helper()
	p := filepath.Join(dir, vmimage.ConfigFile)
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	var c map[string]any
	if err := json.Unmarshal(b, &c); err != nil {
		t.Fatal(err)
	}
	f(c)
	b, _ = json.Marshal(c)
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

package imagestore_test

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"testing"

	"github.com/containerd/errdefs"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/macvz/macvz/integration/testimage"
	"github.com/macvz/macvz/integration/testregistry"
	"github.com/macvz/macvz/vmimage"
	"github.com/macvz/macvz/vmimage/imagestore"
)

func tartDir(t testing.TB) (string, testimage.VMDir) {
	t.Helper()
	v, err := testimage.TartDir(21, "darwin", 3<<20+4096, map[int64][]byte{
		8192:    testimage.DiskPattern(21, 300<<10),
		2 << 20: testimage.DiskPattern(22, 64<<10),
	})
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if err := v.Write(dir); err != nil {
		t.Fatal(err)
	}
	return dir, v
}

// TestImportPushRoundTrip: a Tart VM directory imported, pushed, and
// pulled into another store is the same image with the same disk.
func TestImportPushRoundTrip(t *testing.T) {
	ctx := context.Background()
	reg := testregistry.Start(t, testregistry.Options{})
	src, v := tartDir(t)
	s := newStore(t, insecure(reg.Host()))

	var progressed bool
	img, err := s.Import(ctx, src, "local/tart:1", imagestore.WithProgress(1, func(p imagestore.Progress) {
		if len(p.Blobs) == 1 && p.Blobs[0].Size == v.DiskSize {
			progressed = true
		}
	}))
	if err != nil {
		t.Fatal(err)
	}
	if img.Kind != vmimage.KindTart || img.Name != "docker.io/local/tart:1" || !s.HasBase(ctx, img) {
		t.Fatalf("imported %+v (HasBase %v)", img, s.HasBase(ctx, img))
	}
	if !progressed {
		t.Error("no progress reported the disk being read")
	}
	sameFile(t, filepath.Join(viewBase(t, s, img), vmimage.DiskFile), v.Disk())
	// keep_disk_chunks = false: no chunk blob is stored.
	have := blobs(t, s)
	m := readManifest(t, s, img)
	for _, l := range m.Layers {
		if vmimage.IsDiskLayer(l.MediaType) == have[l.Digest] {
			t.Errorf("layer %s (%s): stored %v", l.Digest, l.MediaType, have[l.Digest])
		}
	}
	// The same directory makes the same image.
	again, err := s.Import(ctx, src, "local/tart:again")
	if err != nil {
		t.Fatal(err)
	}
	if again.ID() != img.ID() {
		t.Errorf("importing twice: IDs %s and %s", img.ID(), again.ID())
	}

	target := reg.Ref("roundtrip/tart", "1")
	res, err := s.Push(ctx, "local/tart:1", target, nil)
	if err != nil {
		t.Fatal(err)
	}
	// Config, VM config layer, 1 chunk, NVRAM, manifest.
	if res.Uploaded != 5 || res.Skipped != 0 || res.Manifest.Digest.String() != img.ID() {
		t.Errorf("push: %+v; want 5 blobs uploaded and manifest %s", res, img.ID())
	}
	res, err = s.Push(ctx, "local/tart:1", target, nil)
	if err != nil {
		t.Fatal(err)
	}
	if res.Uploaded != 0 || res.Skipped != 5 {
		t.Errorf("second push: %+v; want everything skipped", res)
	}

	other := newStore(t, insecure(reg.Host()))
	pulled := mustPull(t, other, target, nil)
	if pulled.ID() != img.ID() || pulled.Kind != vmimage.KindTart {
		t.Errorf("pulled %s (%s), pushed %s", pulled.ID(), pulled.Kind, img.ID())
	}
	sameFile(t, filepath.Join(viewBase(t, other, pulled), vmimage.DiskFile), v.Disk())
	sameFile(t, filepath.Join(viewBase(t, other, pulled), vmimage.NVRAMFile), v.Files[vmimage.NVRAMFile])

	// A pulled image goes on to another repository the same way.
	res, err = other.Push(ctx, pulled.ID(), reg.Ref("again/tart", "x"), nil)
	if err != nil || res.Uploaded != 5 {
		t.Errorf("pushing the pulled image: %+v, %v", res, err)
	}
}

func readManifest(t testing.TB, s *testStore, img imagestore.Image) ocispec.Manifest {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(s.root, "images", "content", "blobs", "sha256", img.Manifest.Digest.Encoded()))
	if err != nil {
		t.Fatal(err)
	}
	var m ocispec.Manifest
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	return m
}

func TestImportLayout(t *testing.T) {
	ctx := context.Background()
	a, err := testimage.Tart(testimage.TartOptions{Seed: 31, DiskSize: 2 << 20})
	if err != nil {
		t.Fatal(err)
	}
	b, err := testimage.Agoda(testimage.AgodaOptions{Seed: 32})
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if err := testimage.WriteLayout(dir, map[string]testimage.Image{"a": a, "b": b}); err != nil {
		t.Fatal(err)
	}
	s := newStore(t, nil)
	img, err := s.Import(ctx, dir, "example.com/vm:b")
	if err != nil {
		t.Fatal(err)
	}
	if img.ID() != b.Manifest.Digest.String() || img.Kind != vmimage.KindAgoda || !s.HasBase(ctx, img) {
		t.Errorf("imported %+v, want image b (%s)", img, b.Manifest.Digest)
	}
	_, err = s.Import(ctx, dir, "example.com/vm:c")
	wantClass(t, err, "NotFound", errdefs.IsNotFound, "none is named", "a, b")

	// A blob that leads out of the layout is never read.
	outside := t.TempDir()
	chunk := a.Parsed().Layers[1].Digest
	blob := filepath.Join(dir, "blobs", "sha256", chunk.Encoded())
	if err := os.Rename(blob, filepath.Join(outside, "blob")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(filepath.Join(outside, "blob"), blob); err != nil {
		t.Fatal(err)
	}
	fresh := newStore(t, nil)
	_, err = fresh.Import(ctx, dir, "example.com/vm:a")
	if err == nil {
		t.Fatal("a layout blob linked outside the layout was imported")
	}
	assertEmpty(t, fresh, a)
}

func TestImportRefusesLeavingNothing(t *testing.T) {
	ctx := context.Background()
	s := newStore(t, nil)
	src, _ := tartDir(t)
	os.Remove(filepath.Join(src, vmimage.NVRAMFile))
	if err := os.Symlink("/etc/shadow", filepath.Join(src, vmimage.NVRAMFile)); err != nil {
		t.Fatal(err)
	}
	_, err := s.Import(ctx, src, "local/bad:1")
	wantClass(t, err, "InvalidArgument", errdefs.IsInvalidArgument, "not a regular file")
	_, err = s.Import(ctx, "relative/dir", "local/bad:1")
	wantClass(t, err, "InvalidArgument", errdefs.IsInvalidArgument, "absolute path")
	_, err = s.Import(ctx, filepath.Join(src, "nothing"), "local/bad:1")
	wantClass(t, err, "NotFound", errdefs.IsNotFound)
	assertEmpty(t, s, testimage.Image{})

	// Pushing what is not there, or to a digest.
	_, err = s.Push(ctx, "local/none:1", "127.0.0.1:1/x:1", nil)
	wantClass(t, err, "NotFound", errdefs.IsNotFound)
}

// TestPushTartChunksOfAnotherEncoder: a pulled Tart image whose chunks
// the store released, made by an encoder other than macvz's (here: other
// block sizes, as Apple's makes other bytes), is pushed with the disk in
// macvz's chunks under a new manifest: the same disk. With its chunks
// kept, the same manifest goes.
func TestPushTartChunksOfAnotherEncoder(t *testing.T) {
	ctx := context.Background()
	reg := testregistry.Start(t, testregistry.Options{})
	disk := testimage.DiskPattern(41, 5<<20)
	img, err := testimage.Tart(testimage.TartOptions{Seed: 41, Disk: disk, ChunkSize: 2 << 20, BlockSize: 16 << 10})
	if err != nil {
		t.Fatal(err)
	}
	push(t, reg, "tart/apple", "1", img)

	s := newStore(t, insecure(reg.Host()))
	pulled := mustPull(t, s, reg.Ref("tart/apple", "1"), nil)
	res, err := s.Push(ctx, pulled.Name, reg.Ref("tart/ours", "1"), nil)
	if err != nil {
		t.Fatal(err)
	}
	if res.Manifest.Digest == img.Manifest.Digest {
		t.Fatalf("pushed the original manifest %s, whose chunks the store cannot make", img.Manifest.Digest)
	}
	other := newStore(t, insecure(reg.Host()))
	again := mustPull(t, other, reg.Ref("tart/ours", "1"), nil)
	if again.ID() != res.Manifest.Digest.String() {
		t.Errorf("pulled %s, pushed %s", again.ID(), res.Manifest.Digest)
	}
	sameFile(t, filepath.Join(viewBase(t, other, again), vmimage.DiskFile), disk)
	if m := readManifest(t, other, again); m.Annotations[vmimage.AnnotationPacker] != vmimage.PackerTartLZ4 {
		t.Errorf("the new manifest's annotations %v: want %s", m.Annotations, vmimage.AnnotationPacker)
	}

	keep := newStore(t, insecure(reg.Host()), func(o *imagestore.Options) { o.KeepDiskChunks = true })
	kept := mustPull(t, keep, reg.Ref("tart/apple", "1"), nil)
	res, err = keep.Push(ctx, kept.Name, reg.Ref("tart/kept", "1"), nil)
	if err != nil || res.Manifest.Digest != img.Manifest.Digest {
		t.Errorf("push with the chunks kept: %+v, %v; want the original manifest %s", res, err, img.Manifest.Digest)
	}
}

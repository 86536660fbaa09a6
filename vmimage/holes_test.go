package vmimage_test

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/macvz/macvz/integration/testimage"
	"github.com/macvz/macvz/vmimage"
)

// Both ways of clearing a range leave it reading as zeros and everything
// around it as it was, whatever the alignment.
func TestClearRange(t *testing.T) {
	for name, clear := range map[string]func(*os.File, int64, int64) error{
		"punch": vmimage.PunchHole,
		"zero":  vmimage.ZeroData,
	} {
		t.Run(name, func(t *testing.T) {
			data := testimage.DiskPattern(7, 4<<20)
			for i := range data {
				if data[i] == 0 {
					data[i] = 1 // data everywhere, so every granule is cleared
				}
			}
			path := filepath.Join(t.TempDir(), "disk")
			if err := os.WriteFile(path, data, 0o644); err != nil {
				t.Fatal(err)
			}
			f, err := os.OpenFile(path, os.O_RDWR, 0)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			const off, n = 1<<20 + 100, 2<<20 - 333
			if err := clear(f, off, n); err != nil {
				t.Fatal(err)
			}
			got, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			want := append([]byte(nil), data...)
			clear := want[off : off+n]
			for i := range clear {
				clear[i] = 0
			}
			if !bytes.Equal(got, want) {
				t.Fatal("the file does not read as its data with the range zeroed")
			}
			if err := vmimage.ZeroData(f, 4<<20-10, 100); err != nil {
				t.Fatalf("a range past the end: %v", err)
			}
		})
	}
}

func TestIsHole(t *testing.T) {
	path := filepath.Join(t.TempDir(), "disk")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Truncate(8 << 20); err != nil {
		t.Fatal(err)
	}
	if !vmimage.IsHole(f, 0, 8<<20) {
		t.Skip("this file system does not report holes (SEEK_DATA)")
	}
	if _, err := f.WriteAt([]byte{1}, 5<<20); err != nil {
		t.Fatal(err)
	}
	if vmimage.IsHole(f, 4<<20, 2<<20) {
		t.Error("a range holding a written byte reported as a hole")
	}
	if !vmimage.IsHole(f, 0, 4<<20) {
		t.Error("the unwritten first 4 MiB not reported as a hole")
	}
}

// A Tart unpack resumed in the directory of a finished one takes each of
// its chunks as unpacked without their bytes, and finishes the same
// base; a chunk changed since is refused and its range cleared.
func TestTartResume(t *testing.T) {
	disk := append(testimage.DiskPattern(9, 2<<20), make([]byte, 2<<20)...)
	img := mustImage(t)(testimage.Tart(testimage.TartOptions{Seed: 9, Disk: disk, ChunkSize: 1 << 20}))
	dir := t.TempDir()
	if err := unpack(t, img, dir); err != nil {
		t.Fatal(err)
	}
	os.Remove(filepath.Join(dir, vmimage.DescriptorFile))
	f, err := os.OpenFile(filepath.Join(dir, vmimage.DiskFile), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt([]byte{0xee}, 1<<20+5); err != nil { // chunk 1
		t.Fatal(err)
	}
	f.Close()

	m := manifestOf(t, img)
	rf, ok := vmimage.Detect(m).(vmimage.ResumableFormat)
	if !ok {
		t.Fatal("Tart is not resumable")
	}
	ctx := context.Background()
	un, err := rf.ResumeUnpacker(ctx, m, blobData(img, m.Config.Digest), dir, vmimage.Limits{})
	if err != nil {
		t.Fatal(err)
	}
	u := un.(vmimage.Resumer)
	var chunks []int
	for i := range m.Layers {
		if !u.Resumable(i) {
			if m.Layers[i].MediaType == vmimage.MediaTypeTartDiskV2 {
				t.Fatalf("disk layer %d not resumable", i)
			}
			continue
		}
		chunks = append(chunks, i)
		ok, err := u.Resume(ctx, i)
		if err != nil {
			t.Fatal(err)
		}
		if want := len(chunks) != 2; ok != want {
			t.Errorf("chunk %d resumed: %v, want %v", len(chunks)-1, ok, want)
		}
	}
	if len(chunks) != 4 {
		t.Fatalf("%d chunks", len(chunks))
	}
	if _, err := u.Resume(ctx, chunks[0]); err == nil {
		t.Error("a chunk resumed twice")
	}
	for i, l := range m.Layers {
		if u.Resumable(i) && i != chunks[1] {
			continue
		}
		w, err := u.Layer(i)
		if err != nil {
			t.Fatal(err)
		}
		w.Write(blobData(img, l.Digest))
		if err := w.Close(); err != nil {
			t.Fatal(err)
		}
	}
	if err := u.Finish(ctx); err != nil {
		t.Fatal(err)
	}
	checkFile(t, filepath.Join(dir, vmimage.DiskFile), disk)
	if _, err := vmimage.ReadDescriptor(dir); err != nil {
		t.Fatal(err)
	}
}

package snapshotter

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"
)

// TestSparseCopyKeepsHoles runs the fallback copy directly (whatever the
// temporary file system can do): holes stay holes, and so do blocks of
// written zeros.
func TestSparseCopyKeepsHoles(t *testing.T) {
	dir := t.TempDir()
	src, dst := filepath.Join(dir, "src"), filepath.Join(dir, "dst")
	const size = 256<<20 + 123 // not a multiple of the block size
	makeSparse(t, src, size, map[int64][]byte{
		0:         randomBytes(1, 4096),
		100 << 20: randomBytes(2, 1<<20),
		size - 10: []byte("the end.."),
	})
	// 8 MiB of written zeros: allocated in src, a hole in the copy.
	writeAt(t, src, 200<<20, make([]byte, 8<<20))
	if err := sparseCopy(src, dst); err != nil {
		t.Fatal(err)
	}
	sameFile(t, src, dst)
	srcBlocks, dstBlocks := allocated(t, src), allocated(t, dst)
	t.Logf("allocated: src %d bytes, copy %d bytes (apparent size %d)", srcBlocks, dstBlocks, size)
	if dstBlocks > 2<<20 {
		t.Fatalf("the copy allocates %d bytes for ~1 MiB of data: holes were filled", dstBlocks)
	}
	if srcBlocks >= 8<<20 && dstBlocks >= srcBlocks {
		t.Fatalf("written zeros were copied: copy %d bytes, source %d", dstBlocks, srcBlocks)
	}
	if err := sparseCopy(src, dst); !os.IsExist(err) {
		t.Fatalf("sparseCopy onto an existing file: %v", err)
	}
}

func TestSparseCopyEdgeCases(t *testing.T) {
	dir := t.TempDir()
	for name, data := range map[string][]byte{
		"empty":   nil,
		"tiny":    []byte("x"),
		"zeros":   make([]byte, 3*zeroBlock+1),
		"mixed":   append(append(make([]byte, zeroBlock), randomBytes(5, 2*zeroBlock+7)...), make([]byte, copyBuffer+zeroBlock)...),
		"big-odd": randomBytes(6, 3*copyBuffer+17),
	} {
		src := filepath.Join(dir, name)
		if err := os.WriteFile(src, data, 0o600); err != nil {
			t.Fatal(err)
		}
		dst := src + ".copy"
		if err := sparseCopy(src, dst); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		got, err := os.ReadFile(dst)
		if err != nil || !bytes.Equal(got, data) {
			t.Fatalf("%s: copy differs (%d bytes, want %d), %v", name, len(got), len(data), err)
		}
	}
}

func TestCloneFile(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "src")
	if err := os.WriteFile(src, randomBytes(7, 100_000), 0o751); err != nil {
		t.Fatal(err)
	}
	m, err := CloneFile(src, filepath.Join(dir, "dst"))
	if err != nil || (m != MethodReflink && m != MethodSparseCopy) {
		t.Fatalf("CloneFile = %q, %v", m, err)
	}
	sameFile(t, src, filepath.Join(dir, "dst"))
	if fi, err := os.Stat(filepath.Join(dir, "dst")); err != nil || fi.Mode().Perm() != 0o751 {
		t.Fatalf("clone mode: %v, %v", fi, err)
	}
	if _, err := CloneFile(src, filepath.Join(dir, "dst")); !os.IsExist(err) {
		t.Fatalf("CloneFile onto an existing file: %v", err)
	}
	if _, err := CloneFile(filepath.Join(dir, "missing"), filepath.Join(dir, "dst2")); !os.IsNotExist(err) {
		t.Fatalf("CloneFile of a missing file: %v", err)
	}
	if _, err := os.Lstat(filepath.Join(dir, "dst2")); !os.IsNotExist(err) {
		t.Fatal("a failed CloneFile left its destination")
	}
}

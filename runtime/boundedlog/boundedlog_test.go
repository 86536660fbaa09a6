package boundedlog

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"
)

func TestRotates(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "console.log")
	w, err := Open(p, 1000)
	if err != nil {
		t.Fatal(err)
	}
	var all bytes.Buffer
	for i := 0; i < 500; i++ {
		line := bytes.Repeat([]byte{byte('a' + i%26)}, 37)
		all.Write(line)
		if n, err := w.Write(line); err != nil || n != len(line) {
			t.Fatalf("write %d: %d %v", i, n, err)
		}
	}
	w.Close()
	cur, _ := os.ReadFile(p)
	old, _ := os.ReadFile(p + ".1")
	if len(cur) > 1000 || len(old) != 1000 {
		t.Fatalf("sizes: current %d, previous %d (limit 1000)", len(cur), len(old))
	}
	// The newest output is kept, in order.
	if got := append(old, cur...); !bytes.HasSuffix(all.Bytes(), got) {
		t.Fatal("the kept output is not the end of what was written")
	}
	// Reopening appends to the current file and keeps counting.
	w, _ = Open(p, 1000)
	w.Write(bytes.Repeat([]byte("z"), 2500))
	w.Close()
	for _, f := range []string{p, p + ".1"} {
		if fi, err := os.Stat(f); err != nil || fi.Size() > 1000 {
			t.Fatalf("%s: %v %v", f, fi, err)
		}
	}
	if _, err := os.Stat(p + ".2"); !os.IsNotExist(err) {
		t.Fatal("more than one old file")
	}
}

func TestRefusesSymlink(t *testing.T) {
	dir := t.TempDir()
	target := filepath.Join(dir, "target")
	os.WriteFile(target, []byte("keep"), 0o600)
	p := filepath.Join(dir, "console.log")
	os.Symlink(target, p)
	if _, err := Open(p, 10); err == nil {
		t.Fatal("opened a log through a symlink")
	}
	if b, _ := os.ReadFile(target); string(b) != "keep" {
		t.Fatal("the symlink's target changed")
	}
}

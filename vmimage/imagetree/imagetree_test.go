package imagetree

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
)

// newc builds a cpio archive from entries (ino counts up; a hard link
// reuses its target's ino, with the data on the last entry).
type newc struct {
	buf bytes.Buffer
	ino uint32
}

func (c *newc) add(name string, mode, nlink, ino uint32, data []byte) {
	if ino == 0 {
		c.ino++
		ino = c.ino
	}
	fmt.Fprintf(&c.buf, "070701%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x",
		ino, mode, 0, 0, nlink, 1700000000, len(data), 0, 0, 0, 0, len(name)+1, 0)
	c.buf.WriteString(name)
	c.buf.WriteByte(0)
	c.pad()
	c.buf.Write(data)
	c.pad()
}

func (c *newc) pad() {
	for c.buf.Len()%4 != 0 {
		c.buf.WriteByte(0)
	}
}

func (c *newc) trailer() []byte {
	c.add("TRAILER!!!", 0, 1, 0, nil)
	return c.buf.Bytes()
}

func readFile(t *testing.T, p string) string {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// TestExtractInitrd: a guest's initramfs becomes its tree: files with
// their modes, directories, symlinks (pointing anywhere: they are the
// guest's) and hard links; device nodes and FIFOs are left out; a gzip
// initramfs and concatenated archives work.
func TestExtractInitrd(t *testing.T) {
	var c newc
	c.add(".", sIFDIR|0o755, 2, 0, nil)
	c.add("bin", sIFDIR|0o755, 2, 0, nil)
	c.add("bin/busybox", sIFREG|0o4755, 1, 0, []byte("#!busybox"))
	c.add("bin/sh", sIFLNK|0o777, 1, 0, []byte("busybox"))
	c.add("etc/passwd", sIFREG|0o644, 1, 0, []byte("root:x:0:0::/root:/bin/sh\n"))
	c.add("etc/hosts", sIFLNK|0o777, 1, 0, []byte("/proc/self/hosts"))
	c.add("dev/null", sIFCHR|0o666, 1, 0, nil)
	c.add("dev/fifo", sIFIFO|0o600, 1, 0, nil)
	c.add("usr/a", sIFREG|0o755, 2, 100, nil)
	c.add("usr/b", sIFREG|0o755, 2, 100, []byte("linked"))
	c.add("ro", sIFDIR|0o555, 2, 0, nil)
	c.add("ro/file", sIFREG|0o444, 1, 0, []byte("in a read-only dir"))
	first := c.trailer()
	var c2 newc
	c2.add("second", sIFREG|0o600, 1, 0, []byte("2nd archive"))
	archive := append(append(append([]byte{}, first...), make([]byte, 512)...), c2.trailer()...)

	for _, gz := range []bool{false, true} {
		in := archive
		if gz {
			var z bytes.Buffer
			w := gzip.NewWriter(&z)
			w.Write(archive)
			w.Close()
			in = z.Bytes()
		}
		dir := t.TempDir()
		b := &Budget{Max: 1 << 20}
		if err := ExtractInitrd(context.Background(), bytes.NewReader(in), dir, b); err != nil {
			t.Fatalf("gzip=%v: %v", gz, err)
		}
		if got := readFile(t, filepath.Join(dir, "etc/passwd")); !strings.HasPrefix(got, "root:") {
			t.Errorf("passwd %q", got)
		}
		if fi, err := os.Stat(filepath.Join(dir, "bin/busybox")); err != nil || fi.Mode().Perm() != 0o755 || fi.Mode()&os.ModeSetuid == 0 {
			t.Errorf("busybox: %v %v", fi.Mode(), err)
		}
		if l, err := os.Readlink(filepath.Join(dir, "bin/sh")); err != nil || l != "busybox" {
			t.Errorf("bin/sh: %q %v", l, err)
		}
		if l, err := os.Readlink(filepath.Join(dir, "etc/hosts")); err != nil || l != "/proc/self/hosts" {
			t.Errorf("etc/hosts: %q %v", l, err)
		}
		for _, gone := range []string{"dev/null", "dev/fifo"} {
			if _, err := os.Lstat(filepath.Join(dir, gone)); !os.IsNotExist(err) {
				t.Errorf("%s was made: %v", gone, err)
			}
		}
		a, _ := os.Stat(filepath.Join(dir, "usr/a"))
		bb, _ := os.Stat(filepath.Join(dir, "usr/b"))
		if readFile(t, filepath.Join(dir, "usr/a")) != "linked" || !os.SameFile(a, bb) {
			t.Errorf("hard link: a %q, same file %v", readFile(t, filepath.Join(dir, "usr/a")), os.SameFile(a, bb))
		}
		if fi, _ := os.Stat(filepath.Join(dir, "ro")); fi.Mode().Perm() != 0o555 || readFile(t, filepath.Join(dir, "ro/file")) != "in a read-only dir" {
			t.Errorf("read-only dir: %v", fi.Mode())
		}
		if readFile(t, filepath.Join(dir, "second")) != "2nd archive" {
			t.Error("the second archive was not extracted")
		}
	}
}

// TestExtractInitrdHostile: an archive cannot reach out of its tree (by
// name or through a symlink it planted), overrun its budget or lie about
// its sizes.
func TestExtractInitrdHostile(t *testing.T) {
	outside := t.TempDir()
	for name, build := range map[string]func(c *newc){
		"dot-dot name": func(c *newc) { c.add("../escape", sIFREG|0o644, 1, 0, []byte("x")) },
		"deep dot-dot": func(c *newc) { c.add("a/../../escape", sIFREG|0o644, 1, 0, []byte("x")) },
		"through a symlink": func(c *newc) {
			c.add("link", sIFLNK|0o777, 1, 0, []byte(outside))
			c.add("link/escape", sIFREG|0o644, 1, 0, []byte("x"))
		},
		"through a relative symlink": func(c *newc) {
			c.add("up", sIFLNK|0o777, 1, 0, []byte("../../../../../../.."+outside))
			c.add("up/escape", sIFREG|0o644, 1, 0, []byte("x"))
		},
		"hard link out": func(c *newc) {
			c.add("link", sIFLNK|0o777, 1, 0, []byte(outside))
			c.add("link/escape", sIFREG|0o644, 2, 7, nil)
		},
	} {
		t.Run(name, func(t *testing.T) {
			var c newc
			build(&c)
			err := ExtractInitrd(context.Background(), bytes.NewReader(c.trailer()), t.TempDir(), &Budget{Max: 1 << 20})
			if err == nil {
				t.Error("extracted")
			}
			if _, serr := os.Lstat(filepath.Join(outside, "escape")); !os.IsNotExist(serr) {
				t.Fatalf("wrote outside the tree (%v)", err)
			}
		})
	}

	// Over the budget.
	var c newc
	c.add("big", sIFREG|0o644, 1, 0, bytes.Repeat([]byte("x"), 4096))
	if err := ExtractInitrd(context.Background(), bytes.NewReader(c.trailer()), t.TempDir(), &Budget{Max: 1000, Setting: "[image] max_unpacked_size"}); !errdefs.IsInvalidArgument(err) || !strings.Contains(err.Error(), "max_unpacked_size") {
		t.Errorf("over the budget: %v", err)
	}
	// Truncated, garbage, a name without its NUL.
	full := c.trailer()
	for name, in := range map[string][]byte{
		"truncated": full[:200],
		"garbage":   []byte("this is not a cpio archive at all, not even close........................................................................"),
		"bad name":  []byte("070701" + strings.Repeat("00000000", 11) + "00000004" + "00000000" + "abcd"),
	} {
		if err := ExtractInitrd(context.Background(), bytes.NewReader(in), t.TempDir(), &Budget{}); !errdefs.IsDataLoss(err) {
			t.Errorf("%s: %v", name, err)
		}
	}
}

// tarLayer builds a layer and its diff ID.
func tarLayer(t *testing.T, entries []tar.Header, data map[string]string) ([]byte, digest.Digest) {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, h := range entries {
		h := h
		body := data[h.Name]
		h.Size = int64(len(body))
		if h.Typeflag != tar.TypeReg {
			h.Size = 0
		}
		if err := tw.WriteHeader(&h); err != nil {
			t.Fatal(err)
		}
		if h.Size > 0 {
			tw.Write([]byte(body))
		}
	}
	tw.Close()
	return buf.Bytes(), digest.FromBytes(buf.Bytes())
}

// TestApplyLayer: layers apply in order with whiteouts (a file and an
// opaque directory), compressed or not; devices are left out; a layer
// whose content is not its diff ID fails.
func TestApplyLayer(t *testing.T) {
	dir := t.TempDir()
	l1, d1 := tarLayer(t, []tar.Header{
		{Name: "etc/", Typeflag: tar.TypeDir, Mode: 0o755},
		{Name: "etc/passwd", Typeflag: tar.TypeReg, Mode: 0o644},
		{Name: "etc/old", Typeflag: tar.TypeReg, Mode: 0o644},
		{Name: "opt/", Typeflag: tar.TypeDir, Mode: 0o755},
		{Name: "opt/gone", Typeflag: tar.TypeReg, Mode: 0o644},
		{Name: "dev/", Typeflag: tar.TypeDir, Mode: 0o755},
		{Name: "dev/sda", Typeflag: tar.TypeBlock, Mode: 0o600, Devmajor: 8},
	}, map[string]string{"etc/passwd": "root:x:0:0\n", "etc/old": "old", "opt/gone": "gone"})
	l2, d2 := tarLayer(t, []tar.Header{
		{Name: "etc/.wh.old", Typeflag: tar.TypeReg, Mode: 0o644},
		{Name: "opt/", Typeflag: tar.TypeDir, Mode: 0o755},
		{Name: "opt/.wh..wh..opq", Typeflag: tar.TypeReg, Mode: 0o644},
		{Name: "opt/new", Typeflag: tar.TypeReg, Mode: 0o644},
	}, map[string]string{"opt/new": "new"})
	var z bytes.Buffer
	w := gzip.NewWriter(&z)
	w.Write(l2)
	w.Close()
	b := &Budget{Max: 1 << 20}
	if err := ApplyLayer(context.Background(), bytes.NewReader(l1), dir, d1, b); err != nil {
		t.Fatal(err)
	}
	if err := ApplyLayer(context.Background(), bytes.NewReader(z.Bytes()), dir, d2, b); err != nil {
		t.Fatal(err)
	}
	if readFile(t, filepath.Join(dir, "etc/passwd")) != "root:x:0:0\n" || readFile(t, filepath.Join(dir, "opt/new")) != "new" {
		t.Error("layer contents")
	}
	for _, gone := range []string{"etc/old", "opt/gone", "dev/sda", "etc/.wh.old"} {
		if _, err := os.Lstat(filepath.Join(dir, gone)); !os.IsNotExist(err) {
			t.Errorf("%s: %v", gone, err)
		}
	}
	if err := ApplyLayer(context.Background(), bytes.NewReader(l1), t.TempDir(), d2, &Budget{}); !errdefs.IsDataLoss(err) {
		t.Errorf("wrong diff ID: %v", err)
	}
	if err := ApplyLayer(context.Background(), bytes.NewReader(l1), t.TempDir(), d1, &Budget{Max: 100}); !errdefs.IsInvalidArgument(err) {
		t.Errorf("over the budget: %v", err)
	}
}

// TestResolve: an image sub path resolves as in the guest, with the
// tree as "/": symlinks are followed inside the tree, never out.
func TestResolve(t *testing.T) {
	root := t.TempDir()
	for _, d := range []string{"private/etc", "usr/lib"} {
		os.MkdirAll(filepath.Join(root, d), 0o755)
	}
	os.WriteFile(filepath.Join(root, "private/etc/passwd"), []byte("x"), 0o644)
	os.Symlink("/private/etc", filepath.Join(root, "etc"))
	os.Symlink("usr/lib", filepath.Join(root, "lib"))
	os.Symlink("../../../../../../../../..", filepath.Join(root, "up"))
	os.Symlink("/", filepath.Join(root, "slash"))
	os.Symlink("loop2", filepath.Join(root, "loop1"))
	os.Symlink("loop1", filepath.Join(root, "loop2"))
	for sub, want := range map[string]string{
		"":             root,
		"etc":          root + "/private/etc",
		"etc/passwd":   root + "/private/etc/passwd",
		"lib":          root + "/usr/lib",
		"up":           root,
		"up/etc":       root + "/private/etc",
		"slash/etc":    root + "/private/etc",
		"../../etc":    root + "/private/etc",
		"usr/../etc/.": root + "/private/etc",
	} {
		got, err := Resolve(root, sub)
		if err != nil || got != want {
			t.Errorf("Resolve(%q) = %q, %v; want %q", sub, got, err, want)
		}
	}
	for sub, is := range map[string]func(error) bool{
		"/etc":             errdefs.IsInvalidArgument,
		"not-existing":     errdefs.IsNotFound,
		"etc/passwd/x":     errdefs.IsInvalidArgument,
		"loop1":            errdefs.IsInvalidArgument,
		"etc/not-existing": errdefs.IsNotFound,
	} {
		if _, err := Resolve(root, sub); !is(err) {
			t.Errorf("Resolve(%q): %v", sub, err)
		}
	}
}

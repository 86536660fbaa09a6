package imagestore_test

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/containerd/errdefs"

	"github.com/macvz/macvz/integration/testimage"
	"github.com/macvz/macvz/integration/testregistry"
)

// initrd is a one-file newc cpio archive.
func initrd(name, data string) []byte {
	var b bytes.Buffer
	entry := func(name string, mode uint32, data string) {
		fmt.Fprintf(&b, "070701%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x", 1, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(name)+1, 0)
		b.WriteString(name + "\x00")
		for b.Len()%4 != 0 {
			b.WriteByte(0)
		}
		b.WriteString(data)
		for b.Len()%4 != 0 {
			b.WriteByte(0)
		}
	}
	entry(name, 0o100644, data)
	entry("TRAILER!!!", 0, "")
	return b.Bytes()
}

// TestTree: an ordinary image's layers and a Linux VM image's
// initramfs become trees, unpacked once and shared; a macOS VM image is
// refused; a removed image's tree goes with it.
func TestTree(t *testing.T) {
	ctx := context.Background()
	reg := testregistry.Start(t, testregistry.Options{})
	s := newStore(t, insecure(reg.Host()))

	oci, err := testimage.OCI(testimage.OCIOptions{Layers: [][]testimage.File{
		{{Path: "/etc/passwd", Data: []byte("root:x:0:0\n")}, {Path: "/old", Data: []byte("old")}},
		{{Path: "/.wh.old", Data: nil}, {Path: "/bin/tool", Data: []byte("#!tool"), Mode: 0o755}},
	}})
	if err != nil {
		t.Fatal(err)
	}
	push(t, reg, "tools", "1", oci)
	linux, err := testimage.Linux(testimage.LinuxOptions{Kernel: []byte("kernel"), Initrd: initrd("etc/os-release", "ID=macvz\n")})
	if err != nil {
		t.Fatal(err)
	}
	push(t, reg, "guest", "1", linux)
	tart, err := testimage.Tart(testimage.TartOptions{Seed: 3, DiskSize: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	push(t, reg, "macos", "1", tart)

	img := mustPull(t, s, reg.Host()+"/tools:1", nil)
	dir, err := s.Tree(ctx, img)
	if err != nil {
		t.Fatal(err)
	}
	sameFile(t, filepath.Join(dir, "etc/passwd"), []byte("root:x:0:0\n"))
	sameFile(t, filepath.Join(dir, "bin/tool"), []byte("#!tool"))
	if _, err := os.Lstat(filepath.Join(dir, "old")); !os.IsNotExist(err) {
		t.Errorf("a whited-out file is in the tree: %v", err)
	}
	if again, err := s.Tree(ctx, img); err != nil || again != dir {
		t.Errorf("second Tree: %q %v, want %q", again, err, dir)
	}

	gimg := mustPull(t, s, reg.Host()+"/guest:1", nil)
	gdir, err := s.Tree(ctx, gimg)
	if err != nil {
		t.Fatal(err)
	}
	sameFile(t, filepath.Join(gdir, "etc/os-release"), []byte("ID=macvz\n"))

	mimg := mustPull(t, s, reg.Host()+"/macos:1", nil)
	if _, err := s.Tree(ctx, mimg); !errdefs.IsFailedPrecondition(err) {
		t.Errorf("a macOS VM image as a tree: %v", err)
	}

	// Released: gone, and made again on the next use.
	if err := s.RemoveTree(ctx, img); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Errorf("the released tree is still there: %v", err)
	}
	if dir, err = s.Tree(ctx, img); err != nil {
		t.Fatal(err)
	}
	// Removing the image collects its tree.
	if err := s.Remove(ctx, reg.Host()+"/tools:1"); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Errorf("the tree of a removed image is still there: %v", err)
	}
}

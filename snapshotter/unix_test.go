//go:build unix

package snapshotter

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/containerd/errdefs"
	"golang.org/x/sys/unix"
)

// A base holding something that is not a file, directory or symlink cannot
// be cloned; the failed Prepare leaves neither metadata nor files.
func TestPrepareUnsupportedFileType(t *testing.T) {
	ctx := context.Background()
	s := newSnapshotter(t, t.TempDir())
	dir := mustDir(t)(s.Prepare(ctx, "unpack", ""))
	if err := os.WriteFile(filepath.Join(dir, "disk.img"), []byte("disk"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mkfifo(filepath.Join(dir, "fifo"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := s.Commit(ctx, "base", "unpack"); err != nil {
		t.Fatal(err)
	}
	before := liveDirs(t, s)
	_, err := s.Prepare(ctx, "vm", "base")
	if !errors.Is(err, errdefs.ErrNotImplemented) {
		t.Fatalf("Prepare from a base with a fifo: %v", err)
	}
	if _, err := s.Stat(ctx, "vm"); !errors.Is(err, errdefs.ErrNotFound) {
		t.Fatalf("Stat after the failed Prepare: %v", err)
	}
	if got := liveDirs(t, s); !slices.Equal(got, before) {
		t.Fatalf("snapshots/ = %q after a failed Prepare, want %q", got, before)
	}
}

// Ownership is preserved when running as root.
func TestCloneKeepsOwner(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("only root can give files away")
	}
	ctx := context.Background()
	s := newSnapshotter(t, t.TempDir())
	dir := mustDir(t)(s.Prepare(ctx, "unpack", ""))
	p := filepath.Join(dir, "disk.img")
	if err := os.WriteFile(p, []byte("disk"), 0o640); err != nil {
		t.Fatal(err)
	}
	if err := os.Lchown(p, 1234, 5678); err != nil {
		t.Fatal(err)
	}
	if err := s.Commit(ctx, "base", "unpack"); err != nil {
		t.Fatal(err)
	}
	vm := mustDir(t)(s.Prepare(ctx, "vm", "base"))
	fi, err := os.Lstat(filepath.Join(vm, "disk.img"))
	if err != nil {
		t.Fatal(err)
	}
	uid, gid, _ := fileOwner(fi)
	if uid != 1234 || gid != 5678 || fi.Mode().Perm() != 0o640 {
		t.Fatalf("clone owner %d:%d mode %v, want 1234:5678 0640", uid, gid, fi.Mode())
	}
}

package memvol

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/macvz/macvz/integration/testutil"
)

func statfsType(t *testing.T, p string) int64 {
	t.Helper()
	var st unix.Statfs_t
	if err := unix.Statfs(p, &st); err != nil {
		t.Fatal(err)
	}
	return st.Type
}

func TestHostTmpfs(t *testing.T) {
	testutil.RequireRoot(t)
	root := t.TempDir()
	rel := "u1/volumes/kubernetes.io~secret/tok"
	vol := filepath.Join(root, rel)
	if err := os.MkdirAll(vol, 0o750); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Unmount(vol, unix.MNT_DETACH) })
	if ok, err := unmountTmpfs(root, rel); err != nil || ok {
		t.Fatalf("unmounting before a mount: %v %v, want false", ok, err)
	}
	for range 2 { // the second is a no-op
		if ok, err := mountTmpfs(root, rel, 1<<20); err != nil || !ok {
			t.Fatalf("mountTmpfs: %v %v", ok, err)
		}
	}
	if statfsType(t, vol) != unix.TMPFS_MAGIC {
		t.Fatal("no tmpfs at the volume")
	}
	if got := listTmpfs(); !slices.Contains(got, vol) {
		t.Errorf("listTmpfs() = %q, missing %s", got, vol)
	}
	var st unix.Statfs_t
	unix.Statfs(vol, &st)
	if got := int64(st.Blocks) * st.Bsize; got != 1<<20 {
		t.Errorf("tmpfs size %d, want 1 MiB", got)
	}
	// One tmpfs, not two stacked.
	if ok, err := unmountTmpfs(root, rel); err != nil || !ok {
		t.Fatalf("unmountTmpfs: %v %v", ok, err)
	}
	if statfsType(t, vol) == unix.TMPFS_MAGIC {
		t.Fatal("a tmpfs is left at the volume")
	}
	if ok, err := unmountTmpfs(root, rel); err != nil || ok {
		t.Fatalf("unmounting again: %v %v, want false", ok, err)
	}

	// A symlink on the way is never followed out of the root.
	outside := t.TempDir()
	os.MkdirAll(filepath.Join(outside, "volumes", "p", "v"), 0o755)
	if err := os.Symlink(outside, filepath.Join(root, "u2")); err != nil {
		t.Fatal(err)
	}
	if _, err := mountTmpfs(root, "u2/volumes/p/v", 0); !errors.Is(err, unix.ELOOP) {
		t.Fatalf("through a symlink: %v, want ELOOP", err)
	}
	if statfsType(t, filepath.Join(outside, "volumes", "p", "v")) == unix.TMPFS_MAGIC {
		t.Fatal("a tmpfs was mounted outside the root")
	}
	// A missing volume directory is an error; unmounting it is not.
	if _, err := mountTmpfs(root, "u3/volumes/p/v", 0); !os.IsNotExist(err) {
		t.Fatalf("missing directory: %v", err)
	}
	if ok, err := unmountTmpfs(root, "u3/volumes/p/v"); err != nil || ok {
		t.Fatalf("unmounting a missing directory: %v %v", ok, err)
	}
}

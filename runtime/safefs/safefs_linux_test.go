package safefs

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containerd/errdefs"
	"golang.org/x/sys/unix"

	"github.com/macvz/macvz/integration/testutil"
)

// mounted reports whether path is a mount point (from mountinfo).
func mounted(t *testing.T, path string) bool {
	t.Helper()
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) > 4 && f[4] == path {
			return true
		}
	}
	return false
}

func bind(t *testing.T, src, dst string) {
	t.Helper()
	if err := unix.Mount(src, dst, "", unix.MS_BIND, ""); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Unmount(dst, unix.MNT_DETACH) })
}

func write(t *testing.T, path, s string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(s), 0o600); err != nil {
		t.Fatal(err)
	}
}

func TestRemoveAllStopsAtMountPoints(t *testing.T) {
	testutil.RequireRoot(t)
	tmp := t.TempDir()
	vol := filepath.Join(tmp, "volume")
	os.Mkdir(vol, 0o700)
	write(t, filepath.Join(vol, "data"), "user data")
	// The state dir is reached through a symlink, as /var/run -> /run.
	real := filepath.Join(tmp, "run")
	os.MkdirAll(filepath.Join(real, "sb", "shared", "c1", "0"), 0o700)
	os.Symlink(real, filepath.Join(tmp, "varrun"))
	bind(t, vol, filepath.Join(real, "sb", "shared", "c1", "0"))
	write(t, filepath.Join(real, "sb", "console.log"), "x")

	err := RemoveAll(filepath.Join(tmp, "varrun", "sb"))
	if !errors.Is(err, ErrMountPoint) || !errdefs.IsFailedPrecondition(err) {
		t.Fatalf("RemoveAll across a bind: %v, want ErrMountPoint/FailedPrecondition", err)
	}
	if b, err := os.ReadFile(filepath.Join(vol, "data")); err != nil || string(b) != "user data" {
		t.Fatalf("the volume's file after RemoveAll: %q, %v", b, err)
	}
	// The mount point itself is refused too.
	if err := RemoveAll(filepath.Join(real, "sb", "shared", "c1", "0")); !errors.Is(err, ErrMountPoint) {
		t.Fatalf("RemoveAll of a mount point: %v", err)
	}
	unix.Unmount(filepath.Join(real, "sb", "shared", "c1", "0"), unix.MNT_DETACH)
	if err := RemoveAll(filepath.Join(tmp, "varrun", "sb")); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(filepath.Join(real, "sb")); !os.IsNotExist(err) {
		t.Fatalf("sb after RemoveAll: %v", err)
	}
	if err := RemoveAll(filepath.Join(real, "sb")); err != nil {
		t.Fatalf("RemoveAll of a missing path: %v", err)
	}
	if _, err := os.Stat(filepath.Join(vol, "data")); err != nil {
		t.Fatal(err)
	}
}

func TestRemoveAllDoesNotFollowSymlinks(t *testing.T) {
	tmp := t.TempDir()
	outside := filepath.Join(tmp, "outside")
	os.Mkdir(outside, 0o700)
	write(t, filepath.Join(outside, "keep"), "k")
	tree := filepath.Join(tmp, "tree")
	os.MkdirAll(filepath.Join(tree, "a", "b"), 0o700)
	os.Symlink(outside, filepath.Join(tree, "a", "link"))
	os.Symlink(filepath.Join(outside, "keep"), filepath.Join(tree, "a", "b", "filelink"))
	write(t, filepath.Join(tree, "a", "b", "f"), "f")
	if err := RemoveAll(tree); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(outside, "keep")); err != nil {
		t.Fatalf("a symlink's target was removed: %v", err)
	}
	if _, err := os.Lstat(tree); !os.IsNotExist(err) {
		t.Fatalf("tree after RemoveAll: %v", err)
	}
}

func TestMountPointRefusesPlantedEntries(t *testing.T) {
	tmp := t.TempDir()
	share := filepath.Join(tmp, "shared")
	os.Mkdir(share, 0o700)
	hostDir := filepath.Join(tmp, "etc-cron.d")
	os.Mkdir(hostDir, 0o700)
	root, err := OpenRoot(share)
	if err != nil {
		t.Fatal(err)
	}
	defer root.Close()

	// The guest made the container's directory a symlink out of the share.
	os.Symlink(hostDir, filepath.Join(share, "c1"))
	if _, err := root.MkdirOpen("c1", 0o700); !errors.Is(err, ErrSymlink) {
		t.Fatalf("MkdirOpen through a planted symlink: %v", err)
	}
	// ... or a volume's mount point.
	c2, err := root.MkdirOpen("c2", 0o700)
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	os.Symlink(hostDir, filepath.Join(share, "c2", "1"))
	os.Symlink(filepath.Join(hostDir, "f"), filepath.Join(share, "c2", "2"))
	for _, tc := range []struct {
		name string
		dir  bool
	}{{"1", true}, {"1", false}, {"2", false}} {
		if f, err := c2.MountPoint(tc.name, tc.dir); !errors.Is(err, ErrSymlink) {
			if f != nil {
				f.Close()
			}
			t.Fatalf("MountPoint(%s, dir=%v) over a planted symlink: %v", tc.name, tc.dir, err)
		}
	}
	if _, err := os.Lstat(filepath.Join(hostDir, "f")); !os.IsNotExist(err) {
		t.Fatalf("a file was created through the symlink: %v", err)
	}
	// A planted file where a directory mount point goes, and the reverse.
	write(t, filepath.Join(share, "c2", "3"), "")
	os.Mkdir(filepath.Join(share, "c2", "4"), 0o700)
	if _, err := c2.MountPoint("3", true); err == nil {
		t.Fatal("a directory mount point over a file")
	}
	if _, err := c2.MountPoint("4", false); err == nil {
		t.Fatal("a file mount point over a directory")
	}
	for _, bad := range []string{"..", "a/b", "", "/etc"} {
		if _, err := c2.MountPoint(bad, true); err == nil {
			t.Fatalf("MountPoint(%q) was accepted", bad)
		}
	}
	// Real ones, made here or left by an earlier try, are fine.
	for _, tc := range []struct {
		name string
		dir  bool
	}{{"5", true}, {"5", true}, {"6", false}, {"6", false}} {
		f, err := c2.MountPoint(tc.name, tc.dir)
		if err != nil {
			t.Fatal(err)
		}
		f.Close()
	}
}

func TestBindOnto(t *testing.T) {
	testutil.RequireRoot(t)
	tmp := t.TempDir()
	src := filepath.Join(tmp, "src")
	os.MkdirAll(filepath.Join(src, "sub"), 0o755)
	write(t, filepath.Join(src, "f"), "hello")
	// A submount in the volume: a read-only bind must make it read-only too.
	if err := unix.Mount("tmpfs", filepath.Join(src, "sub"), "tmpfs", 0, "size=1m"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Unmount(filepath.Join(src, "sub"), unix.MNT_DETACH) })
	// A device node in the volume (as a guest could make through 9p).
	if err := unix.Mknod(filepath.Join(src, "null"), unix.S_IFCHR|0o666, int(unix.Mkdev(1, 3))); err != nil {
		t.Fatal(err)
	}
	share := filepath.Join(tmp, "shared")
	os.Mkdir(share, 0o700)
	root, err := OpenRoot(share)
	if err != nil {
		t.Fatal(err)
	}
	defer root.Close()
	for _, ro := range []bool{true, false} {
		name := map[bool]string{true: "ro", false: "rw"}[ro]
		mp, err := root.MountPoint(name, true)
		if err != nil {
			t.Fatal(err)
		}
		err = BindOnto(src, mp, ro)
		mp.Close()
		if err != nil {
			t.Fatal(err)
		}
		dst := filepath.Join(share, name)
		t.Cleanup(func() { unix.Unmount(dst, unix.MNT_DETACH|unix.MNT_FORCE) })
		if b, err := os.ReadFile(filepath.Join(dst, "f")); err != nil || string(b) != "hello" {
			t.Fatalf("%s: reading through the bind: %q %v", name, b, err)
		}
		for _, p := range []string{filepath.Join(dst, "new"), filepath.Join(dst, "sub", "new")} {
			err := os.WriteFile(p, nil, 0o600)
			if ro && !errors.Is(err, unix.EROFS) {
				t.Fatalf("%s: writing %s: %v, want EROFS", name, p, err)
			}
			if !ro && err != nil {
				t.Fatalf("%s: writing %s: %v", name, p, err)
			}
		}
		if f, err := os.OpenFile(filepath.Join(dst, "null"), os.O_RDONLY, 0); err == nil {
			f.Close()
			t.Fatalf("%s: a device node opened through the bind (nodev missing)", name)
		}
	}
	if err := RemoveAll(share); !errors.Is(err, ErrMountPoint) {
		t.Fatalf("RemoveAll of the share with binds: %v", err)
	}
	if _, err := os.Stat(filepath.Join(src, "f")); err != nil {
		t.Fatal(err)
	}
}

func TestMountTmpfs(t *testing.T) {
	testutil.RequireRoot(t)
	dir := filepath.Join(t.TempDir(), "shared")
	os.Mkdir(dir, 0o700)
	if err := MountTmpfs(dir, 64<<10, 16); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Unmount(dir, unix.MNT_DETACH) })
	if !mounted(t, dir) {
		t.Fatal("no mount")
	}
	if err := os.WriteFile(filepath.Join(dir, "big"), make([]byte, 1<<20), 0o600); !errors.Is(err, unix.ENOSPC) {
		t.Fatalf("writing more than the size: %v, want ENOSPC", err)
	}
	if err := unix.Mknod(filepath.Join(dir, "null"), unix.S_IFCHR|0o666, int(unix.Mkdev(1, 3))); err == nil {
		if f, err := os.Open(filepath.Join(dir, "null")); err == nil {
			f.Close()
			t.Fatal("a device node opened on the share's tmpfs (nodev missing)")
		}
	}
	if ok, err := IsMountPoint(dir); err != nil || !ok {
		t.Fatalf("IsMountPoint: %v %v", ok, err)
	}
}

func TestUnescapeMountPath(t *testing.T) {
	for in, want := range map[string]string{`/a\040b/c\011d`: "/a b/c\td", `/plain`: "/plain", `/end\040`: "/end ", `/short\04`: `/short\04`} {
		if got := unescapeMountPath(in); got != want {
			t.Errorf("%q: got %q, want %q", in, got, want)
		}
	}
}

func TestMountsListsProc(t *testing.T) {
	ms, err := Mounts()
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range ms {
		if m.Point == "/proc" && m.FSType == "proc" {
			return
		}
	}
	t.Fatalf("no proc at /proc in %v", ms)
}

//go:build linux

package snapshotter

import (
	"bytes"
	"context"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/macvz/macvz/integration/testutil"
	"github.com/macvz/macvz/internal/logbuf"
)

// loopFS makes a file system of the given size in an image file under
// t.TempDir() with mkfs (the image path is appended to its arguments),
// mounts it through a loop device and returns the mount point. Unmount and
// detach are registered with t.Cleanup before anything that could fail
// after them, so they run even when the test fails.
func loopFS(t testing.TB, size int64, mkfs ...string) string {
	t.Helper()
	testutil.RequireRoot(t)
	testutil.RequireTool(t, "losetup", "mount")
	testutil.RequireTool(t, "mount", "mount")
	pkg := "e2fsprogs"
	if strings.Contains(mkfs[0], "xfs") {
		pkg = "xfsprogs"
	}
	testutil.RequireTool(t, mkfs[0], pkg)

	dir := t.TempDir()
	img := filepath.Join(dir, "fs.img")
	f, err := os.Create(img)
	if err != nil {
		t.Fatal(err)
	}
	err = f.Truncate(size)
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	run := func(name string, args ...string) (string, error) {
		out, err := exec.Command(name, args...).CombinedOutput()
		return strings.TrimSpace(string(out)), err
	}
	if out, err := run(mkfs[0], append(mkfs[1:], img)...); err != nil {
		t.Fatalf("%s: %v: %s", strings.Join(mkfs, " "), err, out)
	}
	dev, err := run("losetup", "--find", "--show", img)
	if err != nil {
		// No free loop device or no /dev/loop-control: the container is
		// not privileged enough. That is the environment, not the code.
		testutil.Unavailable(t, "needs loop devices (losetup --find: %v: %s); run as root on a host or a --privileged container", err, dev)
	}
	t.Cleanup(func() {
		if out, err := run("losetup", "--detach", dev); err != nil {
			t.Errorf("losetup --detach %s: %v: %s", dev, err, out)
		}
	})
	mnt := filepath.Join(dir, "mnt")
	if err := os.Mkdir(mnt, 0o755); err != nil {
		t.Fatal(err)
	}
	if out, err := run("mount", dev, mnt); err != nil {
		t.Fatalf("mount %s %s: %v: %s", dev, mnt, err, out)
	}
	t.Cleanup(func() {
		// A just-closed file can keep the mount busy for a moment.
		var out string
		var err error
		for range 20 {
			if out, err = run("umount", mnt); err == nil {
				return
			}
			time.Sleep(100 * time.Millisecond)
		}
		t.Errorf("umount %s: %v: %s", mnt, err, out)
	})
	return mnt
}

func freeBytes(t testing.TB, path string) int64 {
	t.Helper()
	var st unix.Statfs_t
	if err := unix.Statfs(path, &st); err != nil {
		t.Fatal(err)
	}
	return int64(st.Bfree) * st.Bsize
}

// writeFull writes n bytes of incompressible, non-zero data to path (no
// holes, nothing for the sparse copy to skip) and syncs it, so that the
// blocks are allocated before anything measures free space.
func writeFull(t testing.TB, path string, n int64) {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := randomBytes(42, 4<<20)
	for off := int64(0); off < n; off += int64(len(buf)) {
		// Make every chunk different.
		buf[0], buf[1] = byte(off>>22), byte(off>>30)
		if _, err := f.Write(buf[:min(int64(len(buf)), n-off)]); err != nil {
			t.Fatal(err)
		}
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
}

// TestReflinkXFS clones a 1 GiB fully allocated disk on a real XFS with
// reflink: the method must be a reflink, the contents equal, and the file
// system's free space must not drop by the size of the disk (the clone
// shares the base's extents).
func TestReflinkXFS(t *testing.T) {
	mnt := loopFS(t, 3<<30, "mkfs.xfs", "-q", "-f", "-m", "reflink=1")
	ctx := context.Background()
	s := newSnapshotter(t, filepath.Join(mnt, "root"))

	unpack := mustDir(t)(s.Prepare(ctx, "unpack", ""))
	writeFull(t, filepath.Join(unpack, "disk.img"), 1<<30)
	if err := os.WriteFile(filepath.Join(unpack, "nvram.bin"), randomBytes(1, 1<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := s.Commit(ctx, "base", "unpack"); err != nil {
		t.Fatal(err)
	}

	free := freeBytes(t, mnt)
	vm := mustDir(t)(s.Prepare(ctx, "vm", "base"))
	used := free - freeBytes(t, mnt)

	if m := s.CloneMethod(); m != MethodReflink {
		t.Fatalf("clone method on XFS with reflink=1 = %q, want %q", m, MethodReflink)
	}
	if st := s.CloneStats(); st.Reflinked != 2 || st.Copied != 0 {
		t.Fatalf("CloneStats = %+v, want 2 reflinked files", st)
	}
	sameFile(t, filepath.Join(unpack, "disk.img"), filepath.Join(vm, "disk.img"))
	sameFile(t, filepath.Join(unpack, "nvram.bin"), filepath.Join(vm, "nvram.bin"))
	t.Logf("cloning 1 GiB used %d bytes of the file system", used)
	if used > 64<<20 {
		t.Fatalf("cloning a 1 GiB disk used %d bytes: the extents are not shared", used)
	}

	// Copy-on-write: the clone's writes do not reach the base.
	writeAt(t, filepath.Join(vm, "disk.img"), 512<<20, []byte("guest write"))
	f, err := os.Open(filepath.Join(unpack, "disk.img"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	got := make([]byte, 11)
	if _, err := f.ReadAt(got, 512<<20); err != nil {
		t.Fatal(err)
	}
	if bytes.Equal(got, []byte("guest write")) {
		t.Fatal("a write to the clone reached the base")
	}

	// A clone onto another file system cannot share extents (EXDEV):
	// CloneFile falls back to a copy.
	other := filepath.Join(t.TempDir(), "disk.img")
	m, err := CloneFile(filepath.Join(unpack, "nvram.bin"), other)
	if err != nil || m != MethodSparseCopy {
		t.Fatalf("CloneFile across file systems = %q, %v; want a sparse copy", m, err)
	}
	sameFile(t, filepath.Join(unpack, "nvram.bin"), other)
}

// TestSparseCopyExt4 clones on a real ext4, which cannot reflink: the
// method must be the sparse copy, holes must stay holes, contents equal,
// and the slowness is logged once, naming the root.
func TestSparseCopyExt4(t *testing.T) {
	mnt := loopFS(t, 1<<30, "mkfs.ext4", "-q", "-F")
	var logs logbuf.Buffer
	old := slog.Default()
	slog.SetDefault(slog.New(slog.NewTextHandler(&logs, nil)))
	t.Cleanup(func() { slog.SetDefault(old) })

	ctx := context.Background()
	root := filepath.Join(mnt, "root")
	s := newSnapshotter(t, root)
	unpack := mustDir(t)(s.Prepare(ctx, "unpack", ""))
	disk := filepath.Join(unpack, "disk.img")
	makeSparse(t, disk, 512<<20, map[int64][]byte{
		0:         randomBytes(1, 64<<10),
		300 << 20: randomBytes(2, 4<<20),
	})
	writeFull(t, filepath.Join(unpack, "nvram.bin"), 8<<20)
	if err := s.Commit(ctx, "base", "unpack"); err != nil {
		t.Fatal(err)
	}

	vm1 := mustDir(t)(s.Prepare(ctx, "vm1", "base"))
	vm2 := mustDir(t)(s.Prepare(ctx, "vm2", "base"))
	if m := s.CloneMethod(); m != MethodSparseCopy {
		t.Fatalf("clone method on ext4 = %q, want %q", m, MethodSparseCopy)
	}
	for _, vm := range []string{vm1, vm2} {
		sameFile(t, disk, filepath.Join(vm, "disk.img"))
		sameFile(t, filepath.Join(unpack, "nvram.bin"), filepath.Join(vm, "nvram.bin"))
		src, dst := allocated(t, disk), allocated(t, filepath.Join(vm, "disk.img"))
		if dst > src+(1<<20) || dst > 8<<20 {
			t.Fatalf("the copy of a disk with %d allocated bytes allocates %d: holes were filled", src, dst)
		}
	}
	out := logs.String()
	if n := strings.Count(out, "cannot reflink"); n != 1 {
		t.Fatalf("the slow-clone warning was logged %d times, want once:\n%s", n, out)
	}
	if !strings.Contains(out, "root="+s.Root()) {
		t.Fatalf("the slow-clone warning does not name the root %s:\n%s", s.Root(), out)
	}
}

// BenchmarkPrepareXFS is BenchmarkPrepare on a loop-mounted XFS with
// reflink (needs root and xfsprogs).
func BenchmarkPrepareXFS(b *testing.B) {
	mnt := loopFS(b, 1<<30, "mkfs.xfs", "-q", "-f", "-m", "reflink=1")
	benchPrepare(b, filepath.Join(mnt, "root"))
}

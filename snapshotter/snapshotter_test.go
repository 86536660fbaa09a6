package snapshotter

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/errdefs"
)

func newSnapshotter(t testing.TB, root string) *Snapshotter {
	t.Helper()
	s, err := New(root)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// mustDir(t)(s.Prepare(...)) is the directory of the snapshot made.
func mustDir(t testing.TB) func([]mount.Mount, error) string {
	return func(mounts []mount.Mount, err error) string {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		dir, err := Dir(mounts)
		if err != nil {
			t.Fatal(err)
		}
		return dir
	}
}

func randomBytes(seed uint64, n int) []byte {
	b := make([]byte, n)
	r := rand.NewChaCha8([32]byte{byte(seed), byte(seed >> 8)})
	r.Read(b)
	return b
}

func writeAt(t testing.TB, path string, off int64, data []byte) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteAt(data, off); err != nil {
		t.Fatal(err)
	}
}

// makeSparse creates path with the given size and data written at the
// given offsets; everything else is a hole.
func makeSparse(t testing.TB, path string, size int64, data map[int64][]byte) {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	for off, d := range data {
		if _, err := f.WriteAt(d, off); err != nil {
			t.Fatal(err)
		}
	}
}

func allocated(t testing.TB, path string) int64 {
	t.Helper()
	fi, err := os.Lstat(path)
	if err != nil {
		t.Fatal(err)
	}
	n, _, _ := allocation(fi)
	return n
}

// sameFile fails unless a and b have equal contents, in chunks so that a
// GiB file is not read into memory at once.
func sameFile(t testing.TB, a, b string) {
	t.Helper()
	fa, err := os.Open(a)
	if err != nil {
		t.Fatal(err)
	}
	defer fa.Close()
	fb, err := os.Open(b)
	if err != nil {
		t.Fatal(err)
	}
	defer fb.Close()
	sa, _ := fa.Stat()
	sb, _ := fb.Stat()
	if sa.Size() != sb.Size() {
		t.Fatalf("%s is %d bytes, %s is %d", a, sa.Size(), b, sb.Size())
	}
	ba, bb := make([]byte, 4<<20), make([]byte, 4<<20)
	for off := int64(0); off < sa.Size(); off += int64(len(ba)) {
		na, _ := fa.ReadAt(ba, off)
		nb, _ := fb.ReadAt(bb, off)
		if na != nb || !bytes.Equal(ba[:na], bb[:nb]) {
			t.Fatalf("%s and %s differ in the 4 MiB at offset %d", a, b, off)
		}
	}
}

func wantErr(t testing.TB, err error, want error, what string) {
	t.Helper()
	if !errors.Is(err, want) {
		t.Fatalf("%s: got error %v, want %v", what, err, want)
	}
}

// liveDirs lists snapshots/ (what should be there: one directory per
// snapshot, nothing half-made).
func liveDirs(t testing.TB, s *Snapshotter) []string {
	t.Helper()
	entries, err := os.ReadDir(filepath.Join(s.Root(), snapshotsDir))
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	return names
}

// makeBase prepares, fills and commits a VM-image-like base called name.
func makeBase(t testing.TB, s *Snapshotter, name string, labels map[string]string) string {
	t.Helper()
	ctx := context.Background()
	dir := mustDir(t)(s.Prepare(ctx, name+"-unpack", ""))
	makeSparse(t, filepath.Join(dir, "disk.img"), 64<<20, map[int64][]byte{
		0:        randomBytes(1, 4096),
		32 << 20: randomBytes(2, 1<<20),
	})
	if err := os.WriteFile(filepath.Join(dir, "nvram.bin"), randomBytes(3, 64<<10), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(dir, "boot", "efi"), 0o750); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "boot", "kernel"), randomBytes(4, 100_001), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "boot", "efi", "empty"), nil, 0o640); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("boot/kernel", filepath.Join(dir, "vmlinuz")); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "vm.json"), []byte(`{"cpus":2}`), 0o644); err != nil {
		t.Fatal(err)
	}
	old := time.Date(2024, 1, 2, 3, 4, 5, 0, time.UTC)
	if err := os.Chtimes(filepath.Join(dir, "vm.json"), old, old); err != nil {
		t.Fatal(err)
	}
	var opts []snapshots.Opt
	if labels != nil {
		opts = append(opts, snapshots.WithLabels(labels))
	}
	if err := s.Commit(ctx, name, name+"-unpack", opts...); err != nil {
		t.Fatal(err)
	}
	return dir
}

// sameTree fails unless the trees at a and b have the same entries, types,
// modes, symlink targets, file contents and file modification times.
func sameTree(t testing.TB, a, b string) {
	t.Helper()
	err := filepath.WalkDir(a, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(a, p)
		q := filepath.Join(b, rel)
		fa, err := os.Lstat(p)
		if err != nil {
			return err
		}
		fb, err := os.Lstat(q)
		if err != nil {
			return fmt.Errorf("clone lacks %s: %w", rel, err)
		}
		if fa.Mode() != fb.Mode() {
			return fmt.Errorf("%s: mode %v, clone has %v", rel, fa.Mode(), fb.Mode())
		}
		switch {
		case fa.Mode()&os.ModeSymlink != 0:
			ta, _ := os.Readlink(p)
			tb, _ := os.Readlink(q)
			if ta != tb {
				return fmt.Errorf("%s: link to %q, clone links to %q", rel, ta, tb)
			}
		case fa.Mode().IsRegular():
			sameFile(t, p, q)
			if !fa.ModTime().Equal(fb.ModTime()) {
				return fmt.Errorf("%s: mtime %v, clone has %v", rel, fa.ModTime(), fb.ModTime())
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

func TestLifecycle(t *testing.T) {
	ctx := context.Background()
	s := newSnapshotter(t, t.TempDir())

	baseDir := makeBase(t, s, "base", map[string]string{"macvz.io/image": "test"})

	info, err := s.Stat(ctx, "base")
	if err != nil {
		t.Fatal(err)
	}
	if info.Kind != snapshots.KindCommitted || info.Name != "base" || info.Parent != "" || info.Labels["macvz.io/image"] != "test" {
		t.Fatalf("Stat(base) = %+v", info)
	}
	_, err = s.Stat(ctx, "base-unpack")
	wantErr(t, err, errdefs.ErrNotFound, "Stat of the committed active key")
	_, err = s.Mounts(ctx, "base")
	wantErr(t, err, errdefs.ErrFailedPrecondition, "Mounts of a committed snapshot")

	baseUsage, err := s.Usage(ctx, "base")
	if err != nil {
		t.Fatal(err)
	}
	// Allocated, not apparent, size: the 64 MiB disk holds ~1 MiB of data.
	if baseUsage.Size < 1<<20 || baseUsage.Size > 8<<20 || baseUsage.Inodes != 9 {
		t.Fatalf("Usage(base) = %+v, want ~1.2 MiB in 9 inodes", baseUsage)
	}

	// A sandbox's disk: a writable clone of the base.
	mounts, err := s.Prepare(ctx, "vm1", "base")
	vm1 := mustDir(t)(mounts, err)
	if want := []string{"rbind", "rw"}; mounts[0].Type != "bind" || !slices.Equal(mounts[0].Options, want) {
		t.Fatalf("Prepare mounts = %+v", mounts)
	}
	if vm1 == baseDir {
		t.Fatal("the clone is the base's own directory")
	}
	sameTree(t, baseDir, vm1)
	if s.CloneMethod() == MethodNone {
		t.Fatal("CloneMethod after Prepare is none")
	}
	t.Logf("clone method on %s: %s", s.Root(), s.CloneMethod())
	// Holes stay holes whatever the method.
	if got := allocated(t, filepath.Join(vm1, "disk.img")); got > 4<<20 {
		t.Fatalf("clone of the sparse disk allocates %d bytes", got)
	}

	// Writes to the clone leave the base as it was.
	before, err := os.ReadFile(filepath.Join(baseDir, "disk.img"))
	if err != nil {
		t.Fatal(err)
	}
	writeAt(t, filepath.Join(vm1, "disk.img"), 0, []byte("written by the guest"))
	writeAt(t, filepath.Join(vm1, "disk.img"), 50<<20, randomBytes(9, 1<<20))
	if err := os.WriteFile(filepath.Join(vm1, "boot", "efi", "empty"), []byte("x"), 0o640); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(filepath.Join(vm1, "nvram.bin")); err != nil {
		t.Fatal(err)
	}
	after, err := os.ReadFile(filepath.Join(baseDir, "disk.img"))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(before, after) {
		t.Fatal("writing the clone changed the base")
	}
	if b, _ := os.ReadFile(filepath.Join(baseDir, "boot", "efi", "empty")); len(b) != 0 {
		t.Fatal("writing the clone changed the base's empty file")
	}
	if _, err := os.Stat(filepath.Join(baseDir, "nvram.bin")); err != nil {
		t.Fatal("removing from the clone removed from the base")
	}

	mounts2, err := s.Mounts(ctx, "vm1")
	if err != nil || !slices.Equal(mounts2[0].Options, mounts[0].Options) || mounts2[0].Source != vm1 {
		t.Fatalf("Mounts(vm1) = %+v, %v", mounts2, err)
	}
	u, err := s.Usage(ctx, "vm1")
	if err != nil {
		t.Fatal(err)
	}
	if u.Inodes != 8 || u.Size < 2<<20 {
		t.Fatalf("Usage(vm1) = %+v, want 8 inodes and >2 MiB", u)
	}

	// A read-only view.
	mounts, err = s.View(ctx, "view1", "base")
	view := mustDir(t)(mounts, err)
	if !slices.Equal(mounts[0].Options, []string{"rbind", "ro"}) || !ReadOnly(mounts) {
		t.Fatalf("View mounts = %+v", mounts)
	}
	sameTree(t, baseDir, view)
	err = s.Commit(ctx, "view-committed", "view1")
	wantErr(t, err, errdefs.ErrFailedPrecondition, "Commit of a view")

	// A second generation: commit the sandbox and prepare from it.
	if err := s.Commit(ctx, "vm1-saved", "vm1", snapshots.WithLabels(map[string]string{"gen": "2"})); err != nil {
		t.Fatal(err)
	}
	vm2 := mustDir(t)(s.Prepare(ctx, "vm2", "vm1-saved"))
	if vm2 == vm1 {
		t.Fatal("vm2 reuses vm1's directory")
	}
	sameTree(t, vm1, vm2)
	if info, err := s.Stat(ctx, "vm2"); err != nil || info.Parent != "vm1-saved" || info.Kind != snapshots.KindActive {
		t.Fatalf("Stat(vm2) = %+v, %v", info, err)
	}

	// Errors.
	_, err = s.Prepare(ctx, "vm2", "base")
	wantErr(t, err, errdefs.ErrAlreadyExists, "Prepare of an existing key")
	_, err = s.Prepare(ctx, "base", "")
	wantErr(t, err, errdefs.ErrAlreadyExists, "Prepare with a committed snapshot's name")
	_, err = s.Prepare(ctx, "vm3", "nope")
	wantErr(t, err, errdefs.ErrNotFound, "Prepare from a missing parent")
	_, err = s.Prepare(ctx, "vm3", "vm2")
	wantErr(t, err, errdefs.ErrInvalidArgument, "Prepare from an active parent")
	_, err = s.View(ctx, "vm3", "view1")
	wantErr(t, err, errdefs.ErrInvalidArgument, "View of a view")
	_, err = s.Prepare(ctx, "", "base")
	wantErr(t, err, errdefs.ErrInvalidArgument, "Prepare with an empty key")
	err = s.Commit(ctx, "base", "vm2")
	wantErr(t, err, errdefs.ErrAlreadyExists, "Commit to an existing name")
	err = s.Commit(ctx, "x", "nope")
	wantErr(t, err, errdefs.ErrNotFound, "Commit of a missing key")
	_, err = s.Mounts(ctx, "nope")
	wantErr(t, err, errdefs.ErrNotFound, "Mounts of a missing key")
	_, err = s.Usage(ctx, "nope")
	wantErr(t, err, errdefs.ErrNotFound, "Usage of a missing key")

	// Labels.
	info, err = s.Update(ctx, snapshots.Info{Name: "base", Labels: map[string]string{"macvz.io/image": "test", "extra": "1"}}, "labels.extra")
	if err != nil || info.Labels["extra"] != "1" || info.Labels["macvz.io/image"] != "test" {
		t.Fatalf("Update = %+v, %v", info, err)
	}
	_, err = s.Update(ctx, snapshots.Info{Name: "nope"})
	wantErr(t, err, errdefs.ErrNotFound, "Update of a missing snapshot")

	// Walk with filters.
	walk := func(filters ...string) []string {
		t.Helper()
		var names []string
		if err := s.Walk(ctx, func(_ context.Context, info snapshots.Info) error {
			names = append(names, info.Name)
			return nil
		}, filters...); err != nil {
			t.Fatal(err)
		}
		slices.Sort(names)
		return names
	}
	for _, c := range []struct {
		filters []string
		want    []string
	}{
		{nil, []string{"base", "view1", "vm1-saved", "vm2"}},
		{[]string{"kind==committed"}, []string{"base", "vm1-saved"}},
		{[]string{"kind==active"}, []string{"vm2"}},
		{[]string{"kind==view"}, []string{"view1"}},
		{[]string{"parent==base"}, []string{"view1", "vm1-saved"}},
		{[]string{`labels."macvz.io/image"==test`}, []string{"base"}},
		// Within a filter, commas mean "and"; several filters mean "or".
		{[]string{"labels.gen==2,kind==committed"}, []string{"vm1-saved"}},
		{[]string{"kind==committed,kind==view"}, nil},
		{[]string{"kind==committed", "kind==view"}, []string{"base", "view1", "vm1-saved"}},
	} {
		if got := walk(c.filters...); !slices.Equal(got, c.want) {
			t.Errorf("Walk(%q) = %q, want %q", c.filters, got, c.want)
		}
	}

	// Remove: children first.
	err = s.Remove(ctx, "base")
	wantErr(t, err, errdefs.ErrFailedPrecondition, "Remove of a base with children")
	err = s.Remove(ctx, "vm1-saved")
	wantErr(t, err, errdefs.ErrFailedPrecondition, "Remove of a committed snapshot with an active child")
	if _, err := os.Stat(baseDir); err != nil {
		t.Fatalf("a refused Remove touched the files: %v", err)
	}
	for _, key := range []string{"vm2", "vm1-saved", "view1"} {
		if err := s.Remove(ctx, key); err != nil {
			t.Fatalf("Remove(%s): %v", key, err)
		}
	}
	for _, dir := range []string{vm1, vm2, view} {
		if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("%s still exists after Remove: %v", dir, err)
		}
	}
	err = s.Remove(ctx, "vm2")
	wantErr(t, err, errdefs.ErrNotFound, "second Remove")
	if got := liveDirs(t, s); len(got) != 1 || got[0] != filepath.Base(baseDir) {
		t.Fatalf("snapshots/ = %q, want only the base's directory", got)
	}
	if err := s.Remove(ctx, "base"); err != nil {
		t.Fatal(err)
	}
	if got := liveDirs(t, s); len(got) != 0 {
		t.Fatalf("snapshots/ = %q after removing everything", got)
	}
	if got := walk(); len(got) != 0 {
		t.Fatalf("Walk after removing everything = %q", got)
	}
}

func TestEmptyParent(t *testing.T) {
	ctx := context.Background()
	s := newSnapshotter(t, t.TempDir())
	dir := mustDir(t)(s.Prepare(ctx, "a", ""))
	entries, err := os.ReadDir(dir)
	if err != nil || len(entries) != 0 {
		t.Fatalf("new snapshot dir: %v, %v", entries, err)
	}
	fi, err := os.Stat(dir)
	if err != nil || fi.Mode().Perm() != 0o755 {
		t.Fatalf("new snapshot dir mode: %v, %v", fi, err)
	}
	mounts, err := s.View(ctx, "v", "")
	if d := mustDir(t)(mounts, err); !ReadOnly(mounts) || d == dir {
		t.Fatalf("View(v, \"\") = %+v", mounts)
	}
	if s.CloneMethod() != MethodNone {
		t.Fatalf("CloneMethod = %q with nothing cloned", s.CloneMethod())
	}
}

func TestReopen(t *testing.T) {
	ctx := context.Background()
	root := t.TempDir()
	s := newSnapshotter(t, root)
	makeBase(t, s, "base", nil)
	vm := mustDir(t)(s.Prepare(ctx, "vm", "base", snapshots.WithLabels(map[string]string{"a": "b"})))
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	s = newSnapshotter(t, root)
	if got := mustDir(t)(s.Mounts(ctx, "vm")); got != vm {
		t.Fatalf("after reopening, Mounts(vm) = %s, want %s", got, vm)
	}
	info, err := s.Stat(ctx, "vm")
	if err != nil || info.Labels["a"] != "b" || info.Parent != "base" {
		t.Fatalf("after reopening, Stat(vm) = %+v, %v", info, err)
	}
}

func TestPrepareFailureLeavesNothing(t *testing.T) {
	s := newSnapshotter(t, t.TempDir())
	makeBase(t, s, "base", nil)
	before := liveDirs(t, s)

	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err := s.Prepare(ctx, "vm", "base")
	wantErr(t, err, context.Canceled, "Prepare with a cancelled context")
	_, err = s.Stat(context.Background(), "vm")
	wantErr(t, err, errdefs.ErrNotFound, "Stat after a failed Prepare")
	if got := liveDirs(t, s); !slices.Equal(got, before) {
		t.Fatalf("snapshots/ = %q after a failed Prepare, want %q", got, before)
	}
	// The key is free again.
	mustDir(t)(s.Prepare(context.Background(), "vm", "base"))
}

func TestCleanup(t *testing.T) {
	ctx := context.Background()
	s := newSnapshotter(t, t.TempDir())
	// Cleanup of a fresh root (no metadata buckets yet) works.
	if err := s.Cleanup(ctx); err != nil {
		t.Fatal(err)
	}
	baseDir := makeBase(t, s, "base", nil)
	vm := mustDir(t)(s.Prepare(ctx, "vm", "base"))
	snaps := filepath.Join(s.Root(), snapshotsDir)
	for _, orphan := range []string{"new-123", "rm-7", "999"} {
		if err := os.MkdirAll(filepath.Join(snaps, orphan, "sub"), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Cleanup(ctx); err != nil {
		t.Fatal(err)
	}
	got := liveDirs(t, s)
	want := []string{filepath.Base(baseDir), filepath.Base(vm)}
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Fatalf("snapshots/ after Cleanup = %q, want %q", got, want)
	}
}

// TestConcurrent runs Prepare/Remove from many goroutines on one base (for
// -race, and for the metadata and the directories to agree afterwards).
func TestConcurrent(t *testing.T) {
	ctx := context.Background()
	s := newSnapshotter(t, t.TempDir())
	baseDir := makeBase(t, s, "base", nil)

	var wg sync.WaitGroup
	errs := make(chan error, 64)
	for i := range 8 {
		wg.Go(func() {
			for j := range 4 {
				key := fmt.Sprintf("vm-%d-%d", i, j)
				if _, err := s.Prepare(ctx, key, "base"); err != nil {
					errs <- err
					return
				}
				if j%2 == 0 {
					if err := s.Remove(ctx, key); err != nil {
						errs <- err
						return
					}
				}
				_ = s.CloneMethod()
			}
		})
	}
	wg.Go(func() {
		for range 4 {
			if err := s.Cleanup(ctx); err != nil {
				errs <- err
			}
		}
	})
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	n := 0
	if err := s.Walk(ctx, func(_ context.Context, info snapshots.Info) error {
		n++
		dir := mustDir(t)(s.Mounts(ctx, info.Name))
		if info.Kind == snapshots.KindActive {
			sameTree(t, baseDir, dir)
		}
		return nil
	}, "kind==active"); err != nil {
		t.Fatal(err)
	}
	if n != 16 || len(liveDirs(t, s)) != 17 {
		t.Fatalf("%d active snapshots and %d directories, want 16 and 17", n, len(liveDirs(t, s)))
	}
	if st := s.CloneStats(); st.Reflinked+st.Copied != 32*5 {
		t.Fatalf("CloneStats = %+v, want 160 files", st)
	}
}

func TestDir(t *testing.T) {
	for _, c := range []struct {
		mounts []mount.Mount
		ok     bool
	}{
		{[]mount.Mount{{Type: "bind", Source: "/a/b/", Options: []string{"rbind", "rw"}}}, true},
		{nil, false},
		{[]mount.Mount{{Type: "bind", Source: "/a"}, {Type: "bind", Source: "/b"}}, false},
		{[]mount.Mount{{Type: "overlay", Source: "/a"}}, false},
		{[]mount.Mount{{Type: "bind", Source: "rel"}}, false},
	} {
		got, err := Dir(c.mounts)
		if c.ok != (err == nil) {
			t.Errorf("Dir(%+v) = %q, %v", c.mounts, got, err)
		}
		if err != nil && !errors.Is(err, errdefs.ErrInvalidArgument) {
			t.Errorf("Dir(%+v) error %v is not InvalidArgument", c.mounts, err)
		}
		if c.ok && got != "/a/b" {
			t.Errorf("Dir(%+v) = %q", c.mounts, got)
		}
	}
}

func TestNewErrors(t *testing.T) {
	if _, err := New(""); !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Fatalf("New(\"\") = %v", err)
	}
	f := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(f, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := New(f); err == nil {
		t.Fatal("New on a regular file succeeded")
	}

	// A root in use fails New instead of hanging.
	root := t.TempDir()
	newSnapshotter(t, root)
	defer func(d time.Duration) { openTimeout = d }(openTimeout)
	openTimeout = 200 * time.Millisecond
	if s, err := New(root); err == nil {
		s.Close()
		t.Fatal("New on a root another Snapshotter holds succeeded")
	} else {
		t.Log(err)
	}
}

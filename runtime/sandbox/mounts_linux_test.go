package sandbox

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/macvz/macvz/integration/testutil"
	"github.com/macvz/macvz/runtime/safefs"
	"github.com/macvz/macvz/runtime/store"
)

func mountedAt(t *testing.T, path string) bool {
	t.Helper()
	ms, err := safefs.Mounts()
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range ms {
		if m.Point == path {
			return true
		}
	}
	return false
}

// The default state dir is reached through a symlink (/var/run ->
// /run): the binds are still found and undone, and the removal of the
// sandbox's files leaves the volume's contents alone.
func TestShareThroughSymlinkedState(t *testing.T) {
	testutil.RequireRoot(t)
	tmp := t.TempDir()
	real := filepath.Join(tmp, "run")
	os.Mkdir(real, 0o755)
	os.Symlink(real, filepath.Join(tmp, "varrun"))
	sbDir := filepath.Join(tmp, "varrun", "macvz", "sandboxes", "sb1")
	if err := os.MkdirAll(sbDir, 0o700); err != nil {
		t.Fatal(err)
	}
	vol := filepath.Join(tmp, "volume")
	os.Mkdir(vol, 0o755)
	if err := os.WriteFile(filepath.Join(vol, "keep.txt"), []byte("user data"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := prepareShare(sbDir); err != nil {
		t.Fatal(err)
	}
	realShare := filepath.Join(real, "macvz", "sandboxes", "sb1", sharedDir)
	t.Cleanup(func() { unmountShared(sbDir) })
	if err := prepareShare(sbDir); err != nil { // a second boot: already a tmpfs
		t.Fatalf("prepareShare again: %v", err)
	}
	for i, ro := range []bool{false, true} {
		if err := bindVolume(sbDir, "c1", i, vol, ro); err != nil {
			t.Fatal(err)
		}
	}
	if !mountedAt(t, filepath.Join(realShare, "c1", "0")) {
		t.Fatal("no bind at c1/0")
	}
	if err := unmountUnder(sbDir, filepath.Join(sharedDir, "c1")); err != nil {
		t.Fatal(err)
	}
	if mountedAt(t, filepath.Join(realShare, "c1", "0")) || mountedAt(t, filepath.Join(realShare, "c1", "1")) {
		t.Fatal("RemoveContainer's unmount missed a bind reached through the symlinked state dir")
	}
	if err := bindVolume(sbDir, "c2", 0, vol, false); err != nil {
		t.Fatal(err)
	}
	// A missed unmount: the removal refuses instead of emptying the volume.
	if err := safefs.RemoveAll(sbDir); !errors.Is(err, safefs.ErrMountPoint) {
		t.Fatalf("removal with the share still mounted: %v", err)
	}
	if err := removeSandboxFiles(sbDir); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(sbDir); !os.IsNotExist(err) {
		t.Fatalf("sandbox dir left: %v", err)
	}
	if b, err := os.ReadFile(filepath.Join(vol, "keep.txt")); err != nil || string(b) != "user data" {
		t.Fatalf("the volume's file after the sandbox's removal: %q %v", b, err)
	}
}

// A guest that learnt a container's ID and planted a symlink where a
// volume's mount point goes gets an error, not a bind over the host
// directory the symlink names.
func TestBindVolumeRefusesPlantedSymlink(t *testing.T) {
	testutil.RequireRoot(t)
	tmp := t.TempDir()
	sbDir := filepath.Join(tmp, "sb")
	os.Mkdir(sbDir, 0o700)
	if err := prepareShare(sbDir); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unmountShared(sbDir) })
	target := filepath.Join(tmp, "etc-cron.d")
	os.Mkdir(target, 0o755)
	vol := t.TempDir()
	share := filepath.Join(sbDir, sharedDir)
	os.Mkdir(filepath.Join(share, "c1"), 0o700)
	os.Symlink(target, filepath.Join(share, "c1", "1"))
	os.Symlink(target, filepath.Join(share, "c2"))
	if err := bindVolume(sbDir, "c1", 0, vol, false); err != nil {
		t.Fatal(err)
	}
	if err := bindVolume(sbDir, "c1", 1, vol, false); !errors.Is(err, safefs.ErrSymlink) {
		t.Fatalf("bind over a planted symlink: %v", err)
	}
	if err := bindVolume(sbDir, "c2", 0, vol, false); !errors.Is(err, safefs.ErrSymlink) {
		t.Fatalf("bind below a planted symlink: %v", err)
	}
	if mountedAt(t, target) {
		t.Fatal("the volume was mounted over the host directory")
	}
	if ents, _ := os.ReadDir(target); len(ents) != 0 {
		t.Fatalf("something was made in the host directory: %v", ents)
	}
}

// A read-only volume is bound under the read-only share, a writable one
// under the writable share, and UnbindVolumes removes both.
func TestBindVolumeShareByMode(t *testing.T) {
	testutil.RequireRoot(t)
	sbDir := filepath.Join(t.TempDir(), "sb")
	os.Mkdir(sbDir, 0o700)
	if err := prepareShare(sbDir); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unmountShared(sbDir) })
	for _, d := range []string{sharedDir, sharedRODir} {
		if !mountedAt(t, filepath.Join(sbDir, d)) {
			t.Fatalf("%s is not a mount of its own", d)
		}
	}
	vol := t.TempDir()
	os.WriteFile(filepath.Join(vol, "f"), []byte("x"), 0o644)
	os.Symlink("f", filepath.Join(vol, "link"))
	if err := bindVolume(sbDir, "c1", 0, vol, true); err != nil {
		t.Fatal(err)
	}
	if err := bindVolume(sbDir, "c1", 1, vol, false); err != nil {
		t.Fatal(err)
	}
	ro, rw := filepath.Join(sbDir, sharedRODir, "c1", "0"), filepath.Join(sbDir, sharedDir, "c1", "1")
	if !mountedAt(t, ro) || !mountedAt(t, rw) {
		t.Fatalf("binds: read-only at %s %v, writable at %s %v", ro, mountedAt(t, ro), rw, mountedAt(t, rw))
	}
	if l, err := os.Readlink(filepath.Join(ro, "link")); err != nil || l != "f" {
		t.Errorf("the read-only bind's symlink: %q, %v", l, err)
	}
	if err := os.WriteFile(filepath.Join(ro, "new"), nil, 0o644); err == nil {
		t.Error("the read-only bind is writable")
	}
	c := &Controller{}
	if err := c.UnbindVolumes(store.Sandbox{Dir: sbDir}, "c1"); err != nil {
		t.Fatal(err)
	}
	if mountedAt(t, ro) || mountedAt(t, rw) {
		t.Error("a bind is left after UnbindVolumes")
	}
}

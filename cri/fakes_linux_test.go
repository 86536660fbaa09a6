package cri

import (
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// unmountBelow unmounts whatever a test left mounted below dir (the
// shares of sandboxes it did not remove), deepest first.
func unmountBelow(t testing.TB, dir string) {
	t.Helper()
	ms := mountsBelow(t, dir)
	sort.Slice(ms, func(i, j int) bool { return len(ms[i]) > len(ms[j]) })
	for _, m := range ms {
		if err := unix.Unmount(m, unix.MNT_DETACH); err != nil {
			t.Errorf("unmounting %s: %v", m, err)
		}
	}
}

// mountsBelow are the mount points at or below dir.
func mountsBelow(t testing.TB, dir string) []string {
	t.Helper()
	rdir, err := filepath.EvalSymlinks(dir)
	if os.IsNotExist(err) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, l := range strings.Split(string(b), "\n") {
		if fs := strings.Fields(l); len(fs) > 4 && (fs[4] == rdir || strings.HasPrefix(fs[4], rdir+"/")) {
			out = append(out, fs[4])
		}
	}
	return out
}

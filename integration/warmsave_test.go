//go:build linux

package integration

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// TestWarmSaveFails: a warm-start save that fails on QEMU (the warm
// directory is full: a 1 MiB tmpfs) costs the warm start only. The VM
// runs on, its agent answers and the sandbox is set up as after a cold
// boot; the next sandbox of the image boots cold and tries again;
// nothing of the failed saves is left.
func TestWarmSaveFails(t *testing.T) {
	v := newVMTest(t)
	warm := filepath.Join(v.d.root(), "warm")
	if err := os.MkdirAll(warm, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount("tmpfs", warm, "tmpfs", unix.MS_NOSUID|unix.MS_NODEV, "size=1m,mode=0700"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Unmount(warm, unix.MNT_DETACH) })

	for _, name := range []string{"savefail-a", "savefail-b"} {
		podCfg := v.podConfig(t, name, nil)
		pod := v.runPod(t, podCfg)
		c := v.startCtr(t, pod, v.ctrConfig(t, "sleeper", v.plain, map[string]any{"command": []string{"sleep", "3600"}}), podCfg)
		// setupGuest ran after the failed save: the hostname is the pod's.
		if h := v.execOut(t, c, "hostname"); h != name {
			t.Errorf("%s: hostname after a failed save: %q", name, h)
		}
		if out := v.execOut(t, c, "echo", "runs on"); strings.TrimSpace(out) != "runs on" {
			t.Errorf("%s: exec after a failed save: %q", name, out)
		}
	}
	log := v.d.log.String()
	if n := strings.Count(log, "cannot save the VM state for warm starts"); n != 2 {
		t.Errorf("%d failed saves logged, want 2 (one per cold boot)", n)
	}
	if strings.Contains(log, "saved the VM state for warm starts") || strings.Contains(log, "VM restored from a saved state") {
		t.Errorf("a state was saved or restored in a full warm directory")
	}
	ents, err := os.ReadDir(warm)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		if e.Name() != "slot-seed" {
			t.Errorf("left in the warm directory after failed saves: %s", e.Name())
		}
	}
	v.d.mustCrictl("rmp", "-f", "-a")
}

//go:build linux

package integration

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// TestSecurityVolumes: a guest that does what a hostile pod author can
// do from inside the VM (root in the guest) against the share and the
// volumes, under a daemon whose state dir is reached through a symlink as
// the default /var/run/macvz is (/var/run -> /run). Nothing on the host
// may change but the volumes' own contents, and removing the pod must
// leave every volume's files in place.
func TestSecurityVolumes(t *testing.T) {
	real, err := os.MkdirTemp("", "mvr")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(real) })
	link := real + "l"
	if err := os.Symlink(real, link); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.Remove(link) })
	v := newVMTestState(t, nil, filepath.Join(link, "s"), "")
	realState := filepath.Join(real, "s")

	hostVol := t.TempDir()
	if err := os.WriteFile(filepath.Join(hostVol, "keep.txt"), []byte("user data\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	roVol := t.TempDir()
	os.WriteFile(filepath.Join(roVol, "ro.txt"), []byte("read only\n"), 0o644)
	// A mount inside a read-only volume is read-only in the guest too.
	sub := filepath.Join(roVol, "sub")
	os.Mkdir(sub, 0o755)
	if err := unix.Mount("tmpfs", sub, "tmpfs", 0, "size=1m"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Unmount(sub, unix.MNT_DETACH) })
	// What a planted symlink would have the host mount a volume over.
	hostTarget := t.TempDir()

	podCfg := v.podConfig(t, "hostile", nil)
	pod := v.runPod(t, podCfg)
	mounts := []map[string]any{
		{"container_path": "/data", "host_path": hostVol},
		{"container_path": "/config", "host_path": roVol, "readonly": true},
	}
	c1 := v.startCtr(t, pod, v.ctrConfig(t, "c1", v.plain, map[string]any{
		"command": []string{"/bin/sh", "-c", "trap 'exit 0' TERM; while :; do sleep 1; done"},
		"mounts":  mounts,
	}), podCfg)
	checkQEMUConfined(t, realState)
	guestShare := "/run/macvz/shared"
	sh := func(script string) (string, error) { return v.d.crictl("exec", "-s", c1, "sh", "-c", script) }

	// 1. The symlink race: the guest learns a container's ID (here from
	// crictl; kubelet's containers have two mounts or more, and the
	// guest learns the ID from the first) and plants symlinks where its
	// volumes' mount points go, aiming at a host directory.
	c2 := strings.TrimSpace(v.d.mustCrictl("create", pod, v.ctrConfig(t, "c2", v.plain, map[string]any{
		"command": []string{"sleep", "600"},
		"mounts":  mounts,
	}), podCfg))
	if out, err := sh("mkdir -p " + guestShare + "/" + c2 + " && ln -s " + hostTarget + " " + guestShare + "/" + c2 + "/0 && ln -s " + hostTarget + " " + guestShare + "/" + c2 + "/1"); err != nil {
		t.Fatalf("planting symlinks in the share: %v\n%s", err, out)
	}
	out, err := v.d.crictl("start", c2)
	if err == nil || !strings.Contains(out, "FailedPrecondition") {
		t.Errorf("c2 over the guest's planted symlinks: %v, want FailedPrecondition:\n%s", err, out)
	}
	if ms := mountsUnder(hostTarget); len(ms) > 0 {
		t.Errorf("a volume was mounted over the host directory the guest aimed at: %v", ms)
	}
	if ents, _ := os.ReadDir(hostTarget); len(ents) > 0 {
		t.Errorf("the host directory the guest aimed at changed: %v", ents)
	}
	// What the guest made in the share is no symlink on the host.
	hostShare := filepath.Join(realState, "sandboxes", pod, "shared")
	if fi, err := os.Lstat(filepath.Join(hostShare, c2, "1")); err == nil && fi.Mode()&os.ModeSymlink != 0 {
		t.Errorf("a guest-made symlink is a symlink on the host: %v", fi.Mode())
	}

	// 2. Device nodes and symlinks made in a volume and in the share are
	// plain files on the host (9p mapped-xattr), and nothing opens a host
	// device through them.
	if out, err := sh("mknod /data/sda b 8 0 && mknod /data/null c 1 3 && ln -s /etc/shadow /data/shadow && mknod " + guestShare + "/mem c 1 1"); err != nil {
		t.Fatalf("mknod/ln in the guest: %v\n%s", err, out)
	}
	for _, p := range []string{filepath.Join(hostVol, "sda"), filepath.Join(hostVol, "null"), filepath.Join(hostVol, "shadow"), filepath.Join(hostShare, "mem")} {
		fi, err := os.Lstat(p)
		if err != nil {
			t.Errorf("%s: %v", p, err)
			continue
		}
		if !fi.Mode().IsRegular() {
			t.Errorf("%s made in the guest is %v on the host, want a regular file", p, fi.Mode())
		}
	}

	// 3. Read-only volumes are read-only below their top mount too.
	if out, err := sh("echo x > /config/sub/new.txt"); err == nil {
		t.Errorf("wrote into a mount below a read-only volume: %s", out)
	}
	if _, err := os.Stat(filepath.Join(sub, "new.txt")); err == nil {
		t.Error("a file appeared in the host's read-only submount")
	}

	// 4. A flood of the share stops at its small tmpfs.
	out, _ = sh("dd if=/dev/zero of=" + guestShare + "/flood bs=1M count=64 2>&1; echo done")
	if fi, err := os.Stat(filepath.Join(hostShare, "flood")); err == nil && fi.Size() > 8<<20 {
		t.Errorf("the guest wrote %d bytes into the share on the host:\n%s", fi.Size(), out)
	}
	// The guest still works, and wrote its volume.
	if out, err := sh("echo from the guest > /data/out.txt && cat /data/keep.txt"); err != nil || !strings.Contains(out, "user data") {
		t.Fatalf("the guest after the attempts: %v\n%s", err, out)
	}

	// 5. Stop and remove: every volume keeps its files.
	v.d.mustCrictl("stopp", pod)
	v.d.mustCrictl("rmp", pod)
	for _, f := range []string{"keep.txt", "out.txt"} {
		if _, err := os.Stat(filepath.Join(hostVol, f)); err != nil {
			t.Errorf("volume file %s after the pod's removal: %v", f, err)
		}
	}
	if _, err := os.Stat(filepath.Join(roVol, "ro.txt")); err != nil {
		t.Errorf("read-only volume file after the pod's removal: %v", err)
	}
	if ms := mountsUnder(realState); len(ms) > 0 {
		t.Errorf("mounts left under the state dir: %v", ms)
	}
	if _, err := os.Stat(filepath.Join(realState, "sandboxes", pod)); !os.IsNotExist(err) {
		t.Errorf("sandbox dir left: %v", err)
	}
	if ps := processesUnder(realState); len(ps) > 0 {
		t.Errorf("processes left: %v", ps)
	}
}

// checkQEMUConfined: the VM's QEMU runs under its seccomp filter
// (-sandbox) with no capability beyond the few it needs: no
// CAP_SYS_ADMIN (mounts), CAP_MKNOD, CAP_SYS_MODULE, CAP_SYS_PTRACE or
// CAP_SETUID, and no_new_privs.
func checkQEMUConfined(t *testing.T, state string) {
	t.Helper()
	found := false
	for _, p := range processesUnder(state) {
		pid, _, _ := strings.Cut(p, ":")
		if !strings.Contains(p, "qemu-system") {
			continue
		}
		found = true
		b, err := os.ReadFile(filepath.Join("/proc", pid, "status"))
		if err != nil {
			t.Fatal(err)
		}
		st := map[string]string{}
		for _, l := range strings.Split(string(b), "\n") {
			if k, v, ok := strings.Cut(l, ":"); ok {
				st[k] = strings.TrimSpace(v)
			}
		}
		if st["Seccomp"] != "2" || st["NoNewPrivs"] != "1" {
			t.Errorf("QEMU %s: Seccomp %q NoNewPrivs %q, want 2 and 1", pid, st["Seccomp"], st["NoNewPrivs"])
		}
		bnd, err := strconv.ParseUint(st["CapBnd"], 16, 64)
		if err != nil {
			t.Fatal(err)
		}
		for _, c := range []int{unix.CAP_SYS_ADMIN, unix.CAP_MKNOD, unix.CAP_SYS_MODULE, unix.CAP_SYS_PTRACE, unix.CAP_SETUID, unix.CAP_SYS_RAWIO} {
			if bnd&(1<<c) != 0 {
				t.Errorf("QEMU %s keeps capability %d (CapBnd %s)", pid, c, st["CapBnd"])
			}
		}
	}
	if !found {
		t.Error("no QEMU process found under the state dir")
	}
}

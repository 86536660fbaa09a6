package integration

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestPodSharesLazy: a pod's shares are mounted when a container first
// binds a volume, not at boot. Until then the guest has neither the 9p
// share mounted nor its kernel modules loaded (a pod without volumes
// never spends its vCPU on them); the first volume then works (read and
// write through to the host), and so does a second container's. Cold
// boots only: the first cold boot of an image for warm starts loads
// every module before its state is saved.
func TestPodSharesLazy(t *testing.T) {
	v := newVMTestIn(t, nil, "[vm]\nwarm_start = false\n")
	podCfg := v.podConfig(t, "lazy", nil)
	pod := v.runPod(t, podCfg)
	sleeper := []string{"/bin/sh", "-c", "trap 'exit 0' TERM; while :; do sleep 1; done"}
	c1 := v.startCtr(t, pod, v.ctrConfig(t, "c1", v.plain, map[string]any{"command": sleeper}), podCfg)
	// /sys/module lists every loaded module: the NIC's driver shows the
	// check can see one.
	modules := func(c string) string {
		t.Helper()
		out, err := v.d.crictl("exec", "-s", c, "sh", "-c",
			"for m in virtio_net 9p 9pnet fscache; do test -d /sys/module/$m && echo $m; done; grep -c ' 9p ' /proc/self/mounts || true")
		if err != nil {
			t.Fatalf("exec: %v\n%s", err, out)
		}
		return strings.Join(strings.Fields(out), " ")
	}
	if got := modules(c1); got != "virtio_net 0" {
		t.Fatalf("a pod without volumes: loaded modules and the container's 9p mounts %q, want only virtio_net and no 9p mount", got)
	}

	hostVol := t.TempDir()
	if err := os.WriteFile(filepath.Join(hostVol, "in.txt"), []byte("from the host\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	c2 := v.startCtr(t, pod, v.ctrConfig(t, "c2", v.plain, map[string]any{
		"command": sleeper,
		"mounts":  []map[string]any{{"container_path": "/data", "host_path": hostVol}},
	}), podCfg)
	out, err := v.d.crictl("exec", "-s", c2, "sh", "-c", "cat /data/in.txt && echo from the guest > /data/out.txt")
	if err != nil || strings.TrimSpace(out) != "from the host" {
		t.Fatalf("the first volume: %v\n%s", err, out)
	}
	if b, err := os.ReadFile(filepath.Join(hostVol, "out.txt")); err != nil || string(b) != "from the guest\n" {
		t.Errorf("the guest's write in the volume on the host: %q %v", b, err)
	}
	// The modules are the guest's; the 9p mount is c2's volume.
	if got := modules(c2); !strings.HasPrefix(got, "virtio_net 9p 9pnet fscache ") || got == "virtio_net 9p 9pnet fscache 0" {
		t.Errorf("after the first volume: loaded modules and the container's 9p mounts %q, want the 9p group and the volume's mount", got)
	}
	c3 := v.startCtr(t, pod, v.ctrConfig(t, "c3", v.plain, map[string]any{
		"command": sleeper,
		"mounts":  []map[string]any{{"container_path": "/again", "host_path": hostVol, "readonly": true}},
	}), podCfg)
	if out, err := v.d.crictl("exec", "-s", c3, "cat", "/again/out.txt"); err != nil || strings.TrimSpace(out) != "from the guest" {
		t.Errorf("a second container's volume: %v\n%s", err, out)
	}
}

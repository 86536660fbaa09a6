//go:build linux

package integration

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"

	"time"

	"golang.org/x/sys/unix"

	"github.com/macvz/macvz/integration/guest"
	"github.com/macvz/macvz/integration/testimage"
	"github.com/macvz/macvz/runtime/nodevm"
	"github.com/macvz/macvz/runtime/safefs"
)

// nodeImage builds the amd64 node image with the tools' kubelet once per
// test binary; NODE_IMAGE_LAYOUT names one built before instead (e.g.
// the arm64 one of `make node-image ARCH=arm64`, which the daemon boots
// under qemu-system-aarch64: slow under TCG, so never in CI).
var nodeImage = sync.OnceValues(func() (testimage.Image, error) {
	if layout := os.Getenv("NODE_IMAGE_LAYOUT"); layout != "" {
		imgs, err := guest.Load(layout)
		if err != nil {
			return testimage.Image{}, err
		}
		img, ok := imgs[guest.RefNode]
		if !ok {
			return testimage.Image{}, fmt.Errorf("%s has no %q tag", layout, guest.RefNode)
		}
		return img, nil
	}
	dir, err := os.MkdirTemp(testTmp, "macvz-node-")
	if err != nil {
		return testimage.Image{}, err
	}
	_, self, _, _ := runtime.Caller(0)
	kubelet := os.Getenv("KUBELET")
	if kubelet == "" {
		kubelet = filepath.Join(filepath.Dir(self), "tools", "bin", "kubelet")
	}
	ctx := context.Background()
	agent := filepath.Join(dir, "macvz-agent")
	if err := guest.BuildStatic(ctx, guest.AgentPackage, agent); err != nil {
		return testimage.Image{}, err
	}
	res, err := guest.Build(ctx, guest.Options{Out: filepath.Join(dir, "node"), Agent: agent, Cache: guest.DefaultCacheDir(), Node: &guest.NodeOptions{Kubelet: kubelet}})
	if err != nil {
		return testimage.Image{}, err
	}
	if err := checkExecHelper(res.Info); err != nil {
		return testimage.Image{}, err
	}
	imgs, err := guest.Load(res.Layout)
	if err != nil {
		return testimage.Image{}, err
	}
	return imgs[guest.RefNode], nil
})

// nodeVMStaticPod is a static pod of the httpd guest on the pod
// network, ready once kubelet's HTTP probe from the node VM reaches its
// pod IP, with two memory-backed volumes (kubelet mounts a tmpfs for
// each: runtime/nodevm/memvol).
const nodeVMStaticPod = `apiVersion: v1
kind: Pod
metadata:
  name: web
  namespace: default
  labels: {tier: front}
spec:
  terminationGracePeriodSeconds: 5
  volumes:
  - name: info
    downwardAPI:
      items:
      - path: labels
        fieldRef: {fieldPath: metadata.labels}
  - name: scratch
    emptyDir: {medium: Memory, sizeLimit: 8Mi}
  containers:
  - name: httpd
    image: %s
    volumeMounts:
    - {name: info, mountPath: /info}
    - {name: scratch, mountPath: /scratch}
    readinessProbe:
      httpGet: {path: /, port: 80}
      periodSeconds: 2
      timeoutSeconds: 5
`

// TestNodeVM: the daemon with [node] enabled boots the node VM from the
// node image and runs the unmodified kubelet (v1.37.2) in it, which
// reaches the daemon's CRI over the VM's agent channel; kubelet, in
// standalone mode, runs a static pod, which is a VM of its own on the
// host. The node VM is on the pod network (network = "pod", as on a
// Mac, here the bridge-tap network in a namespace of the test's): it
// has a pod IP, the node IP on its loopback (kubelet starts only if
// that worked), and kubelet's HTTP readiness probe reaches the static
// pod's IP over the bridge. No CRI client sees the node VM; `macvz node status` and `logs`
// do. `macvz node restart` makes the node VM again and kubelet adopts
// the running pod: same sandbox, same container, no restart; so does a
// node VM killed from outside (SIGKILL to its QEMU). The pod's
// memory-backed volumes are tmpfs mounts on the host, gone with it.
func TestNodeVM(t *testing.T) {
	requireKubelet(t)
	nn := startNodeVMNet(t, "node")
	ns, ipamDir, confDir, bin, nodeHost := nn.ns, nn.ipamDir, nn.confDir, nn.binDir, nn.registry
	// The node IP: an address of the namespace's own (it has no default
	// route to take one from), which the node VM reaches through the
	// bridge's gateway.
	const nodeIP = "192.0.2.10"
	ns.IP(t, "addr", "add", nodeIP+"/32", "dev", "lo")
	nodeRef := nodeHost + "/macvz/node:" + guest.RefNode

	// kubelet's configuration and static pods, in a directory shared
	// into the node VM at its own path. kubelet hard-codes its pod log
	// directories and its root dir's pods/: those are the host's.
	kube, err := os.MkdirTemp("", "mvzkube")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(kube) })
	for _, d := range []string{"manifests"} {
		if err := os.MkdirAll(filepath.Join(kube, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for _, p := range []string{"/var/lib/kubelet/pods", "/var/log/pods", "/var/log/containers"} {
		if _, err := os.Stat(p); os.IsNotExist(err) {
			if err := os.MkdirAll(p, 0o755); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { os.Remove(p) })
		}
	}
	// kubelet removes a deleted pod's directories in its housekeeping,
	// which the node VM's stop at the end can cut short: the static
	// pod's are removed here, on the host where they are (before the
	// directories this test made go: cleanups run last first).
	t.Cleanup(func() {
		dirs, _ := filepath.Glob("/var/log/pods/default_web-macvz-node-test_*")
		for _, d := range dirs {
			uid := d[strings.LastIndex(d, "_")+1:]
			if uid != "" {
				pod := filepath.Join("/var/lib/kubelet/pods", uid)
				for _, m := range hostTmpfsUnder(pod) {
					unix.Unmount(m, unix.MNT_DETACH)
				}
				os.RemoveAll(pod)
			}
			os.RemoveAll(d)
		}
		links, _ := filepath.Glob("/var/log/containers/web-macvz-node-test_*")
		for _, l := range links {
			os.Remove(l)
		}
	})
	cfg, err := json.Marshal(map[string]any{
		"kind":                        "KubeletConfiguration",
		"apiVersion":                  "kubelet.config.k8s.io/v1beta1",
		"cgroupDriver":                "cgroupfs",
		"cgroupsPerQOS":               false,
		"enforceNodeAllocatable":      []string{},
		"failSwapOn":                  false,
		"failCgroupV1":                false,
		"staticPodPath":               filepath.Join(kube, "manifests"),
		"address":                     "127.0.0.1",
		"readOnlyPort":                0,
		"authentication":              map[string]any{"anonymous": map[string]any{"enabled": true}, "webhook": map[string]any{"enabled": false}},
		"authorization":               map[string]any{"mode": "AlwaysAllow"},
		"evictionHard":                map[string]string{"memory.available": "50Mi"},
		"imageGCHighThresholdPercent": 100,
		"imageGCLowThresholdPercent":  99,
		"runtimeRequestTimeout":       "4m",
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(kube, "kubelet.json"), cfg, 0o644); err != nil {
		t.Fatal(err)
	}
	q := quotedList
	v := newVMTestIn(t, ns, fmt.Sprintf(`
[network]
conf_dir = %q
bin_dirs = [%q]

[registry.hosts.%q]
insecure = true

[vm]
warm_start = false

[node]
enabled = true
network = "pod"
node_ip = %q
image = %q
kubelet_args = [%s]
shares = [%s]
cpus = 2
memory_bytes = %d
`, confDir, bin, nodeHost, nodeIP, nodeRef,
		q("--config="+filepath.Join(kube, "kubelet.json"), "--hostname-override=macvz-node-test", "--v=2"),
		q(kube, "/var/lib/kubelet/pods", "/var/log/pods", "/var/log/containers"), 1<<30))
	cli := func(args ...string) (string, error) { return nodeCLI(v.d, args...) }
	status := func() nodevm.Status { return nodeStatus(v.d) }
	// The node VM is no pod: the daemon's cleanup (crictl rmp -a) does
	// not see it. A failed test stops it here (cleanups run last first).
	stopped := false
	t.Cleanup(func() {
		if !stopped {
			cli("stop")
			waitFor(t, "the node VM stopped", time.Minute, func() bool { return status().State == "stopped" })
		}
	})

	// kubelet's log says why a pod did not run (registered after the
	// stop above, so it runs before it).
	t.Cleanup(func() {
		if t.Failed() {
			logs, _ := cli("logs")
			if len(logs) > 30000 {
				logs = logs[len(logs)-30000:]
			}
			t.Logf("kubelet's log (its end):\n%s", logs)
		}
	})

	// The node VM comes up, kubelet in it.
	start := time.Now()
	waitFor(t, "the node VM running (macvz node status)", 4*time.Minute, func() bool { return status().State == "running" })
	st := status()
	t.Logf("node VM running %v after the daemon's start: sandbox %.12s, kubelet %.12s", time.Since(start).Round(10*time.Millisecond), st.SandboxID, st.ContainerID)
	if out, _ := cli("status"); !strings.Contains(out, "running") {
		t.Errorf("macvz node status:\n%s", out)
	}
	// On the pod network: a pod IP of the bridge-tap range.
	if !strings.HasPrefix(st.PodIP, "10.88.") {
		t.Errorf("the node VM's pod IP is %q, want one of 10.88.0.0/16 (macvz node status --json)", st.PodIP)
	}
	nodePodIP := st.PodIP

	// kubelet runs the static pod: a VM of its own, made through the
	// CRI that kubelet reaches from inside the node VM.
	if err := os.WriteFile(filepath.Join(kube, "manifests", "web.yaml"), []byte(fmt.Sprintf(nodeVMStaticPod, v.httpd)), 0o644); err != nil {
		t.Fatal(err)
	}
	start = time.Now()
	var podID string
	waitFor(t, "kubelet in the node VM running the static pod web", 5*time.Minute, func() bool {
		out, _ := v.d.crictl("pods", "--name", "^web-macvz-node-test$", "--state", "ready", "-q")
		podID = strings.TrimSpace(out)
		if podID == "" {
			return false
		}
		ctr, _ := v.d.crictl("ps", "--pod", podID, "--state", "running", "-q")
		return strings.TrimSpace(ctr) != ""
	})
	ctrID := strings.TrimSpace(v.d.mustCrictl("ps", "--pod", podID, "-q"))
	t.Logf("static pod web running %v after its manifest appeared (sandbox %.12s)", time.Since(start).Round(10*time.Millisecond), podID)
	if got := v.execOut(t, ctrID, "cat", "/proc/sys/kernel/hostname"); got == "" {
		t.Errorf("exec into the static pod: empty hostname")
	}
	var insp struct {
		Status struct {
			Metadata struct{ UID string } `json:"metadata"`
		} `json:"status"`
	}
	if err := json.Unmarshal([]byte(v.d.mustCrictl("inspectp", podID)), &insp); err != nil || insp.Status.Metadata.UID == "" {
		t.Fatalf("crictl inspectp %s: no pod UID (%v)", podID, err)
	}
	podDir := filepath.Join("/var/lib/kubelet/pods", insp.Status.Metadata.UID)
	// kubelet removes the pod's directory in its housekeeping, which the
	// node VM's stop can cut short (its log directory may be gone
	// already, so the cleanup above does not find it). Its tmpfs volumes
	// were the daemon's mount namespace's, gone with the daemon.
	t.Cleanup(func() { os.RemoveAll(podDir) })
	// The daemon runs in its network namespace through ip netns exec,
	// which gives it a mount namespace of its own too (a slave of the
	// test's): the tmpfs volumes are mounted there.
	daemonPID := v.d.cmd.Process.Pid
	checkNodeVMMemoryVolumes(t, v, ctrID, podDir, fmt.Sprintf("/proc/%d/root", daemonPID))

	// kubelet's HTTP readiness probe, from the node VM to the pod's IP
	// over the bridge, succeeds: the pod turns Ready.
	var podNetSt podNet
	if err := json.Unmarshal([]byte(v.d.mustCrictl("inspectp", "-o", "json", podID)), &podNetSt); err != nil {
		t.Fatal(err)
	}
	if ip := podNetSt.Status.Network.IP; !strings.HasPrefix(ip, "10.88.") || ip == nodePodIP {
		t.Errorf("the static pod's IP is %q, want another of 10.88.0.0/16 than the node VM's %s", ip, nodePodIP)
	}
	waitFor(t, "kubelet's readiness probe of the static pod succeeding (the pod Ready)", 3*time.Minute, func() bool {
		logs, _ := cli("logs")
		for _, l := range strings.Split(logs, "\n") {
			if strings.Contains(l, `probe="readiness" status="ready"`) && strings.Contains(l, "web-macvz-node-test") {
				return true
			}
		}
		return false
	})

	// No CRI client sees the node VM.
	if out := v.d.mustCrictl("pods", "-q"); strings.Contains(out, st.SandboxID) || len(strings.Fields(out)) != 1 {
		t.Errorf("crictl pods lists %q; want the static pod alone (the node VM hidden)", out)
	}
	if out, err := v.d.crictl("inspectp", st.SandboxID); err == nil {
		t.Errorf("crictl inspectp of the node VM worked: %s", out)
	}
	logs, err := cli("logs")
	if err != nil || !strings.Contains(logs, "kubelet") {
		t.Errorf("macvz node logs: %v\n%s", err, logs)
	}

	// A restart asked makes the node VM again; kubelet adopts the pod.
	first := st.SandboxID
	if out, err := cli("restart"); err != nil {
		t.Fatalf("macvz node restart: %v\n%s", err, out)
	}
	waitFor(t, "a new node VM running", 4*time.Minute, func() bool { s := status(); return s.State == "running" && s.SandboxID != first })
	// kubelet, back, relists the runtime; a pod it judged gone would get
	// a new sandbox, or its container a new attempt, within this window.
	untouched := func(after string) {
		t.Helper()
		deadline := time.Now().Add(45 * time.Second)
		for time.Now().Before(deadline) {
			if out := strings.TrimSpace(v.d.mustCrictl("pods", "--name", "^web-macvz-node-test$", "-q")); out != podID {
				t.Fatalf("after %s the static pod's sandboxes are %q, want %s alone\n%s", after, out, podID, v.d.log.String())
			}
			time.Sleep(3 * time.Second)
		}
		if out := strings.TrimSpace(v.d.mustCrictl("ps", "-a", "--pod", podID, "-q")); out != ctrID {
			t.Errorf("after %s the static pod's containers are %q, want %s alone (no restart)", after, out, ctrID)
		}
		if st := v.inspect(t, ctrID); st.Status.State != "CONTAINER_RUNNING" {
			t.Errorf("after %s the static pod's container is %s", after, st.Status.State)
		}
	}
	untouched("macvz node restart")
	if s := status(); s.Restarts != 1 {
		t.Errorf("macvz node status after one restart: %+v", s)
	}

	// The node VM killed from outside (its QEMU, SIGKILL): the
	// Supervisor sees it stopped and makes it again; kubelet comes back
	// and adopts the pod, which nothing touched.
	killed := status().SandboxID
	pidB, err := os.ReadFile(filepath.Join(v.d.state, "sandboxes", killed, "qemu.pid"))
	if err != nil {
		t.Fatal(err)
	}
	qpid, _ := strconv.Atoi(strings.TrimSpace(string(pidB)))
	if err := syscall.Kill(qpid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	start = time.Now()
	waitFor(t, "a new node VM after its QEMU was killed", 4*time.Minute, func() bool {
		s := status()
		return s.State == "running" && s.SandboxID != killed
	})
	t.Logf("node VM back %v after its QEMU was killed", time.Since(start).Round(10*time.Millisecond))
	untouched("the node VM's kill")
	if s := status(); s.Restarts != 2 || s.LastError == "" {
		t.Errorf("macvz node status after a kill: %+v, want 2 restarts and the last error", s)
	}

	// The manifest goes: kubelet removes the pod.
	os.Remove(filepath.Join(kube, "manifests", "web.yaml"))
	waitFor(t, "the static pod removed", 3*time.Minute, func() bool {
		out, _ := v.d.crictl("pods", "--name", "^web-macvz-node-test$", "--state", "ready", "-q")
		return strings.TrimSpace(out) == ""
	})

	// kubelet, a new one since the restart, unmounts the pod's tmpfs
	// volumes on the host (its container bound them again before it
	// started: memvol's restore).
	waitFor(t, "kubelet unmounting the pod's tmpfs volumes", 2*time.Minute, func() bool { return len(tmpfsUnderOf(strconv.Itoa(daemonPID), podDir)) == 0 })

	// macvz node stop removes the node VM: no shim, no VM, no state.
	second := status().SandboxID
	if out, err := cli("stop"); err != nil {
		t.Fatalf("macvz node stop: %v\n%s", err, out)
	}
	waitFor(t, "the node VM stopped", time.Minute, func() bool { return status().State == "stopped" })
	stopped = true
	dir := filepath.Join(v.d.state, "sandboxes", second)
	waitFor(t, "the node VM's processes and state gone", time.Minute, func() bool {
		_, err := os.Stat(dir)
		return len(processesUnder(dir)) == 0 && os.IsNotExist(err)
	})
	// Its pod IP is released (host-local's reservations: one file each).
	if left, _ := filepath.Glob(filepath.Join(ipamDir, "*", "10.88.*")); len(left) != 0 {
		t.Errorf("pod IPs still reserved after the node VM's stop: %q", left)
	}
}

// checkNodeVMMemoryVolumes: the static pod's downwardAPI and Memory
// emptyDir volumes, which kubelet mounted from the node VM, are tmpfs
// mounts on the host (kubelet's mount helper asked the host for them),
// and the pod's guest sees what kubelet wrote and shares what it writes.
// root is where the daemon's mount namespace shows the host's files.
func checkNodeVMMemoryVolumes(t *testing.T, v *vmTest, ctrID, podDir, root string) {
	t.Helper()
	if got := v.execOut(t, ctrID, "cat", "/info/labels"); !strings.Contains(got, `tier="front"`) {
		t.Errorf("the downwardAPI volume in the pod: %q, want tier=\"front\"", got)
	}
	v.execOut(t, ctrID, "sh", "-c", "echo from-the-pod > /scratch/note")
	for _, kind := range []string{"kubernetes.io~downward-api/info", "kubernetes.io~empty-dir/scratch"} {
		dirs, _ := filepath.Glob(filepath.Join(root, podDir, "volumes", kind))
		if len(dirs) != 1 {
			t.Errorf("host directories of %s: %q, want one", kind, dirs)
			continue
		}
		var st unix.Statfs_t
		if err := unix.Statfs(dirs[0], &st); err != nil || st.Type != unix.TMPFS_MAGIC {
			t.Errorf("%s on the host is not a tmpfs (statfs type %#x, %v)", dirs[0], st.Type, err)
		}
		if strings.HasSuffix(kind, "scratch") {
			if b, err := os.ReadFile(filepath.Join(dirs[0], "note")); err != nil || string(b) != "from-the-pod\n" {
				t.Errorf("the pod's write in its Memory emptyDir, on the host: %q %v", b, err)
			}
			var stf unix.Statfs_t
			unix.Statfs(dirs[0], &stf)
			if size := int64(stf.Blocks) * stf.Bsize; size != 8<<20 {
				t.Errorf("the Memory emptyDir's tmpfs is %d bytes, want its sizeLimit 8 MiB", size)
			}
		} else if target, err := os.Readlink(filepath.Join(dirs[0], "labels")); err != nil || target != "..data/labels" {
			// kubelet's atomic writer's links are real on the host (the
			// node VM's share passes them through).
			t.Errorf("the downwardAPI file on the host: link %q %v, want ..data/labels", target, err)
		}
	}
}

// tmpfsUnderOf lists the tmpfs mounts at or below dir in the mount
// table of process pid's mount namespace ("self": the test's).
func tmpfsUnderOf(pid, dir string) []string {
	ms, _ := safefs.MountsOf(pid)
	var out []string
	for _, m := range ms {
		if m.FSType == "tmpfs" && (m.Point == dir || strings.HasPrefix(m.Point, dir+"/")) {
			out = append(out, m.Point)
		}
	}
	return out
}

// hostTmpfsUnder lists the tmpfs mounts at or below dir in the test's
// mount table.
func hostTmpfsUnder(dir string) []string { return tmpfsUnderOf("self", dir) }

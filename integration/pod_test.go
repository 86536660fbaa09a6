package integration

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/macvz/macvz/integration/testimage"
)

// The pod tests drive the real daemon with the real crictl; every pod is
// a QEMU VM (TCG) booting the test guest.

// hostNetworkLinux is a pod's linux section asking for the node's network
// (its VM gets QEMU's user-mode NAT, no CNI): these tests need no pod
// network. network_test.go tests the pod network.
var hostNetworkLinux = map[string]any{"security_context": map[string]any{"namespace_options": map[string]any{"network": 2}}}

// podConfig is a crictl pod config (JSON) for a test pod.
func (v *vmTest) podConfig(t *testing.T, name string, extra map[string]any) string {
	t.Helper()
	cfg := map[string]any{
		"metadata":      map[string]any{"name": name, "namespace": "macvz-test", "uid": name + "-uid", "attempt": 0},
		"log_directory": filepath.Join(v.d.dir, "logs", name),
		"linux":         hostNetworkLinux,
	}
	for k, val := range extra {
		cfg[k] = val
	}
	return v.writeJSON(t, "pod-"+name+".json", cfg)
}

// ctrConfig is a crictl container config (JSON).
func (v *vmTest) ctrConfig(t *testing.T, name, image string, extra map[string]any) string {
	t.Helper()
	cfg := map[string]any{
		"metadata": map[string]any{"name": name},
		"image":    map[string]any{"image": image},
		"log_path": name + ".log",
	}
	for k, val := range extra {
		cfg[k] = val
	}
	return v.writeJSON(t, "ctr-"+name+"-"+strconv.FormatInt(time.Now().UnixNano(), 36)+".json", cfg)
}

func (v *vmTest) writeJSON(t *testing.T, name string, val any) string {
	t.Helper()
	b, err := json.Marshal(val)
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(v.d.dir, name)
	if err := os.WriteFile(p, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// runPod runs a pod and returns its ID.
func (v *vmTest) runPod(t *testing.T, podCfg string) string {
	t.Helper()
	return strings.TrimSpace(v.d.mustCrictl("runp", podCfg))
}

// startCtr creates and starts a container and returns its ID.
func (v *vmTest) startCtr(t *testing.T, pod, ctrCfg, podCfg string) string {
	t.Helper()
	id := strings.TrimSpace(v.d.mustCrictl("create", pod, ctrCfg, podCfg))
	v.d.mustCrictl("start", id)
	return id
}

// ctrStatus is the part of `crictl inspect -o json` the tests read.
type ctrStatus struct {
	Status struct {
		State      string `json:"state"`
		ExitCode   int32  `json:"exitCode"`
		Reason     string `json:"reason"`
		Message    string `json:"message"`
		StartedAt  string `json:"startedAt"`
		FinishedAt string `json:"finishedAt"`
		LogPath    string `json:"logPath"`
	} `json:"status"`
}

func (v *vmTest) inspect(t *testing.T, id string) ctrStatus {
	t.Helper()
	var st ctrStatus
	if err := json.Unmarshal([]byte(v.d.mustCrictl("inspect", "-o", "json", id)), &st); err != nil {
		t.Fatal(err)
	}
	return st
}

type podStatus struct {
	Status struct {
		State string `json:"state"`
	} `json:"status"`
	Info struct {
		Reason   string `json:"reason"`
		StateDir string `json:"stateDir"`
		Disk     string `json:"disk"`
	} `json:"info"`
}

func (v *vmTest) inspectPod(t *testing.T, id string) podStatus {
	t.Helper()
	var st podStatus
	if err := json.Unmarshal([]byte(v.d.mustCrictl("inspectp", "-o", "json", id)), &st); err != nil {
		t.Fatal(err)
	}
	return st
}

// waitFor polls cond until it holds or the timeout passes.
func waitFor(t *testing.T, what string, timeout time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// execOut runs `crictl exec -s` and returns stdout.
func (v *vmTest) execOut(t *testing.T, ctr string, argv ...string) string {
	t.Helper()
	// crictl adds newlines after the exec's output; drop them all.
	out := v.d.mustCrictl(append([]string{"exec", "-s", ctr}, argv...)...)
	return strings.TrimRight(out, "\n")
}

// processesUnder lists the processes whose command line mentions dir
// (the shim: `macvz shim --dir <dir>`; QEMU: its sockets and disk).
func processesUnder(dir string) []string {
	var out []string
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		if _, err := strconv.Atoi(e.Name()); err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil {
			continue
		}
		cmd := strings.ReplaceAll(string(b), "\x00", " ")
		if strings.Contains(cmd, dir) {
			out = append(out, e.Name()+": "+cmd)
		}
	}
	return out
}

// mountsUnder lists the mounts at or below dir.
func mountsUnder(dir string) []string {
	b, _ := os.ReadFile("/proc/self/mountinfo")
	var out []string
	for _, l := range strings.Split(string(b), "\n") {
		f := strings.Fields(l)
		if len(f) > 4 && strings.HasPrefix(f[4], dir) {
			out = append(out, f[4])
		}
	}
	return out
}

// snapshotDirs counts the snapshotter's directories (bases and clones).
func (v *vmTest) snapshotDirs(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir(filepath.Join(v.d.root(), "snapshots", "snapshots"))
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}

// assertGone checks that nothing of a removed sandbox is left: no
// process, no mount, no state directory, no disk clone, no records.
func (v *vmTest) assertGone(t *testing.T, pod, stateDir string, snapshotsBefore int) {
	t.Helper()
	if ps := processesUnder(stateDir); len(ps) > 0 {
		t.Errorf("processes left for sandbox %s:\n%s", pod, strings.Join(ps, "\n"))
	}
	if ms := mountsUnder(stateDir); len(ms) > 0 {
		t.Errorf("mounts left: %v", ms)
	}
	if _, err := os.Stat(stateDir); !os.IsNotExist(err) {
		ents, _ := os.ReadDir(stateDir)
		var names []string
		for _, e := range ents {
			names = append(names, e.Name())
		}
		t.Errorf("state directory %s left (err %v): %v", stateDir, err, names)
	}
	if n := v.snapshotDirs(t); n != snapshotsBefore {
		t.Errorf("snapshot directories: %d, want %d (a disk clone is left)", n, snapshotsBefore)
	}
	if out := v.d.mustCrictl("pods", "-q", "--id", pod); strings.TrimSpace(out) != "" {
		t.Errorf("crictl pods still lists %s", out)
	}
	if out := v.d.mustCrictl("ps", "-a", "-q", "--pod", pod); strings.TrimSpace(out) != "" {
		t.Errorf("crictl ps -a still lists containers of %s: %s", pod, out)
	}
}

var criLogLine = regexp.MustCompile(`^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+Z (stdout|stderr) (F|P) (.*)$`)

// TestPodLifecycle: a pod VM with two containers, exec, logs, volumes,
// stop and removal leaving nothing behind.
func TestPodLifecycle(t *testing.T) {
	v := newVMTest(t)
	snapsBefore := v.snapshotDirs(t)
	hostVol := t.TempDir()
	if err := os.WriteFile(filepath.Join(hostVol, "in.txt"), []byte("from the host\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	roVol := t.TempDir()
	if err := os.WriteFile(filepath.Join(roVol, "ro.txt"), []byte("read only\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	podCfg := v.podConfig(t, "lifecycle", map[string]any{
		"hostname":   "lifecycle-host",
		"dns_config": map[string]any{"servers": []string{"10.96.0.10"}, "searches": []string{"macvz-test.svc.cluster.local"}, "options": []string{"ndots:5"}},
	})
	pod := v.runPod(t, podCfg)
	stateDir := v.inspectPod(t, pod).Info.StateDir

	// c1 runs; its output goes to the log, a partial line last.
	c1Cfg := v.ctrConfig(t, "c1", v.plain, map[string]any{
		"command": []string{"/bin/sh", "-c", `echo hello; echo oops >&2; printf 'no newline'; trap 'exit 0' TERM; while :; do sleep 1; done`},
		"envs":    []map[string]string{{"key": "GREETING", "value": "hi there"}},
		"mounts": []map[string]any{
			{"container_path": "/data", "host_path": hostVol},
			{"container_path": "/config", "host_path": roVol, "readonly": true},
		},
	})
	c1 := v.startCtr(t, pod, c1Cfg, podCfg)
	if st := v.inspect(t, c1); st.Status.State != "CONTAINER_RUNNING" {
		t.Fatalf("c1 is %s after start", st.Status.State)
	}
	if out := v.d.mustCrictl("ps", "-q", "--state", "running", "--pod", pod); !strings.Contains(out, c1) {
		t.Errorf("crictl ps does not list c1 as running: %q", out)
	}

	// The guest has the pod's hostname, DNS config and the container env.
	if h := strings.TrimSpace(v.execOut(t, c1, "hostname")); h != "lifecycle-host" {
		t.Errorf("hostname in the guest: %q", h)
	}
	resolv := v.execOut(t, c1, "cat", "/etc/resolv.conf")
	for _, want := range []string{"nameserver 10.96.0.10", "search macvz-test.svc.cluster.local", "options ndots:5"} {
		if !strings.Contains(resolv, want) {
			t.Errorf("resolv.conf lacks %q:\n%s", want, resolv)
		}
	}
	if env := v.execOut(t, c1, "sh", "-c", `echo "$GREETING|$HOSTNAME"`); strings.TrimSpace(env) != "hi there|lifecycle-host" {
		t.Errorf("exec env: %q", env)
	}
	// A host-network pod's VM has QEMU's user-mode NAT: the host's
	// loopback is its gateway, where the test registry listens.
	if out := v.execOut(t, c1, "ip", "-4", "addr", "show", "eth0"); !strings.Contains(out, "10.0.2.15/24") {
		t.Errorf("eth0 of a host-network pod: %s", out)
	}
	regPort := v.reg.Host()[strings.LastIndex(v.reg.Host(), ":")+1:]
	if out, err := v.d.crictl("exec", "-s", c1, "wget", "-q", "-O", "-", "http://10.0.2.2:"+regPort+"/v2/"); err != nil || !strings.Contains(out, "{}") {
		t.Errorf("reaching the host from a host-network pod: %v\n%s", err, out)
	}
	// Exit codes pass through ExecSync.
	out, err := v.d.crictl("exec", "-s", c1, "sh", "-c", "echo before; exit 3")
	if err == nil || !strings.Contains(out, "exited with 3") {
		t.Errorf("exec exiting 3: err %v, output %q", err, out)
	}
	// Volumes: read-write and read-only, from the host.
	if got := v.execOut(t, c1, "cat", "/data/in.txt", "/config/ro.txt"); got != "from the host\nread only" {
		t.Errorf("volume contents in the guest: %q", got)
	}
	v.execOut(t, c1, "sh", "-c", "echo from the guest > /data/out.txt")
	if b, err := os.ReadFile(filepath.Join(hostVol, "out.txt")); err != nil || string(b) != "from the guest\n" {
		t.Errorf("file written in the guest, on the host: %q, %v", b, err)
	}
	if out, err := v.d.crictl("exec", "-s", c1, "sh", "-c", "echo x > /config/new.txt"); err == nil {
		t.Errorf("writing to a read-only volume succeeded: %s", out)
	}

	// A second container runs in the same VM and exits non-zero.
	c2Cfg := v.ctrConfig(t, "c2", v.plain, map[string]any{
		"command": []string{"/bin/sh", "-c", "cat /proc/sys/kernel/random/boot_id > /data/c2-boot-id; exit 7"},
		"mounts":  []map[string]any{{"container_path": "/data", "host_path": hostVol}},
	})
	c2 := v.startCtr(t, pod, c2Cfg, podCfg)
	waitFor(t, "c2 to exit", time.Minute, func() bool { return v.inspect(t, c2).Status.State == "CONTAINER_EXITED" })
	st2 := v.inspect(t, c2)
	if st2.Status.ExitCode != 7 || st2.Status.Reason != "Error" {
		t.Errorf("c2: exit %d reason %q, want 7 Error", st2.Status.ExitCode, st2.Status.Reason)
	}
	if st2.Status.FinishedAt < st2.Status.StartedAt {
		t.Errorf("c2 finished (%s) before it started (%s)", st2.Status.FinishedAt, st2.Status.StartedAt)
	}
	bootID, _ := os.ReadFile(filepath.Join(hostVol, "c2-boot-id"))
	if c1Boot := v.execOut(t, c1, "cat", "/proc/sys/kernel/random/boot_id"); c1Boot != strings.TrimSpace(string(bootID)) || c1Boot == "" {
		t.Errorf("c1 and c2 are not in the same VM: boot ids %q and %q", c1Boot, bootID)
	}

	// Logs: content through crictl, and the CRI format on disk.
	logs := v.d.mustCrictl("logs", c1)
	if !strings.Contains(logs, "hello") {
		t.Errorf("crictl logs c1: %q", logs)
	}
	st1 := v.inspect(t, c1)
	raw, err := os.ReadFile(st1.Status.LogPath)
	if err != nil {
		t.Fatal(err)
	}
	var streams, tags []string
	for _, l := range strings.Split(strings.TrimRight(string(raw), "\n"), "\n") {
		m := criLogLine.FindStringSubmatch(l)
		if m == nil {
			t.Fatalf("log line not in the CRI format: %q", l)
		}
		streams = append(streams, m[1]+":"+m[3])
		tags = append(tags, m[2])
	}

	// StopContainer: SIGTERM, the trap exits 0.
	v.d.mustCrictl("stop", "--timeout", "20", c1)
	st1 = v.inspect(t, c1)
	if st1.Status.State != "CONTAINER_EXITED" || st1.Status.ExitCode != 0 || st1.Status.Reason != "Completed" {
		t.Errorf("c1 after stop: %+v", st1.Status)
	}
	// The partial line is closed as P once the process is gone.
	raw, _ = os.ReadFile(st1.Status.LogPath)
	if !strings.Contains(string(raw), " stdout P no newline") {
		t.Errorf("log lacks the partial line as P:\n%s", raw)
	}
	if !strings.Contains(strings.Join(streams, "\n"), "stdout:hello") || !strings.Contains(strings.Join(streams, "\n"), "stderr:oops") {
		t.Errorf("log entries: %v (tags %v)", streams, tags)
	}
	// Stop and remove are idempotent (crictl looks IDs up first, so the
	// repeated calls go over the CRI directly).
	v.d.mustCrictl("stop", c1)
	v.d.mustCrictl("rm", c1, c2)
	rt := v.d.runtimeClient(t)
	ctx := context.Background()
	if _, err := rt.RemoveContainer(ctx, &runtimeapi.RemoveContainerRequest{ContainerId: c1}); err != nil {
		t.Errorf("removing a removed container: %v", err)
	}
	v.d.mustCrictl("stopp", pod)
	if _, err := rt.StopPodSandbox(ctx, &runtimeapi.StopPodSandboxRequest{PodSandboxId: pod}); err != nil {
		t.Errorf("stopping a stopped sandbox: %v", err)
	}
	if st := v.inspectPod(t, pod); st.Status.State != "SANDBOX_NOTREADY" {
		t.Errorf("pod after stopp: %s", st.Status.State)
	}
	if ps := processesUnder(stateDir); len(ps) > 0 {
		t.Errorf("processes left after stopp:\n%s", strings.Join(ps, "\n"))
	}
	v.d.mustCrictl("rmp", pod)
	if _, err := rt.RemovePodSandbox(ctx, &runtimeapi.RemovePodSandboxRequest{PodSandboxId: pod}); err != nil {
		t.Errorf("removing a removed sandbox: %v", err)
	}
	v.assertGone(t, pod, stateDir, snapsBefore)
}

// TestPodVMContainer: a VM image without a command is the VM itself;
// stopping it shuts the VM down. The httpd image's default process runs
// when no command is given.
func TestPodVMContainer(t *testing.T) {
	v := newVMTest(t)
	snapsBefore := v.snapshotDirs(t)
	podCfg := v.podConfig(t, "vmctr", nil)
	pod := v.runPod(t, podCfg)
	stateDir := v.inspectPod(t, pod).Info.StateDir
	vmc := v.startCtr(t, pod, v.ctrConfig(t, "vm", v.plain, nil), podCfg)
	if st := v.inspect(t, vmc); st.Status.State != "CONTAINER_RUNNING" {
		t.Fatalf("VM container: %s", st.Status.State)
	}
	if out := v.execOut(t, vmc, "cat", "/proc/1/comm"); out != "init" { // the agent is /init
		t.Errorf("exec in the VM container: PID 1 is %q", out)
	}
	v.d.mustCrictl("stop", "--timeout", "10", vmc)
	if st := v.inspect(t, vmc); st.Status.State != "CONTAINER_EXITED" || st.Status.ExitCode != 0 {
		t.Errorf("VM container after stop: %+v", st.Status)
	}
	if st := v.inspectPod(t, pod); st.Status.State != "SANDBOX_NOTREADY" {
		t.Errorf("pod after its VM container stopped: %s", st.Status.State)
	}
	if ps := processesUnder(stateDir); len(ps) > 0 {
		t.Errorf("processes left after the VM container stopped:\n%s", strings.Join(ps, "\n"))
	}
	v.d.mustCrictl("rmp", pod)
	v.assertGone(t, pod, stateDir, snapsBefore)

	// The httpd image's default process serves its page.
	podCfg = v.podConfig(t, "web", nil)
	pod = v.runPod(t, podCfg)
	web := v.startCtr(t, pod, v.ctrConfig(t, "web", v.httpd, nil), podCfg)
	var page string
	waitFor(t, "httpd to answer", time.Minute, func() bool {
		out, err := v.d.crictl("exec", "-s", web, "wget", "-q", "-O", "-", "http://127.0.0.1/")
		page = out
		return err == nil
	})
	if !strings.Contains(page, "hello from the macvz guest") {
		t.Errorf("httpd page: %q", page)
	}
	v.d.mustCrictl("rmp", "-f", pod)
}

// TestPodVMKilled: a VM killed from outside makes its sandbox NotReady
// and its containers Exited with a reason.
func TestPodVMKilled(t *testing.T) {
	v := newVMTest(t)
	podCfg := v.podConfig(t, "killed", nil)
	pod := v.runPod(t, podCfg)
	c := v.startCtr(t, pod, v.ctrConfig(t, "sleeper", v.plain, map[string]any{"command": []string{"sleep", "3600"}}), podCfg)
	stateDir := v.inspectPod(t, pod).Info.StateDir
	pidB, err := os.ReadFile(filepath.Join(stateDir, "qemu.pid"))
	if err != nil {
		t.Fatal(err)
	}
	qpid, _ := strconv.Atoi(strings.TrimSpace(string(pidB)))
	if err := syscall.Kill(qpid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the sandbox to become NotReady", time.Minute, func() bool {
		return v.inspectPod(t, pod).Status.State == "SANDBOX_NOTREADY"
	})
	if r := v.inspectPod(t, pod).Info.Reason; !strings.Contains(r, "VM stopped") {
		t.Errorf("NotReady reason: %q", r)
	}
	st := v.inspect(t, c)
	if st.Status.State != "CONTAINER_EXITED" || st.Status.Reason == "" || st.Status.Message == "" {
		t.Errorf("container of a killed VM: %+v", st.Status)
	}
	v.d.mustCrictl("rmp", "-f", pod)
}

// TestPodDaemonRestart: kill -9 the daemon with two running pods; the
// new daemon re-attaches to their shims.
func TestPodDaemonRestart(t *testing.T) {
	v := newVMTest(t)
	var pods, ctrs []string
	for i := range 2 {
		name := fmt.Sprintf("restart%d", i)
		podCfg := v.podConfig(t, name, nil)
		pod := v.runPod(t, podCfg)
		pods = append(pods, pod)
		ctrs = append(ctrs, v.startCtr(t, pod, v.ctrConfig(t, "sleeper", v.plain, map[string]any{"command": []string{"sleep", "3600"}}), podCfg))
	}
	v.d.crash()
	out := v.d.mustCrictl("ps", "-q", "--state", "running")
	for i, c := range ctrs {
		if !strings.Contains(out, c) {
			t.Errorf("after the restart, crictl ps lacks %s: %q", c, out)
		}
		if got := strings.TrimSpace(v.execOut(t, c, "echo", "still here")); got != "still here" {
			t.Errorf("exec after the restart: %q", got)
		}
		if st := v.inspectPod(t, pods[i]); st.Status.State != "SANDBOX_READY" {
			t.Errorf("pod %d after the restart: %s", i, st.Status.State)
		}
	}
	// A shim that died while the daemon was down: NotReady with a reason.
	v.d.cmd.Process.Kill()
	v.d.cmd.Wait()
	dir := v.inspectPodOffline(t, pods[1])
	for _, f := range []string{"shim.pid", "qemu.pid"} {
		b, _ := os.ReadFile(filepath.Join(dir, f))
		if p, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil {
			syscall.Kill(p, syscall.SIGKILL)
		}
	}
	v.d.start()
	st := v.inspectPod(t, pods[1])
	if st.Status.State != "SANDBOX_NOTREADY" || !strings.Contains(st.Info.Reason, "shim") {
		t.Errorf("pod whose shim died: %s, reason %q", st.Status.State, st.Info.Reason)
	}
	if cs := v.inspect(t, ctrs[1]); cs.Status.State != "CONTAINER_EXITED" || cs.Status.Message == "" {
		t.Errorf("container whose shim died: %+v", cs.Status)
	}
	if st := v.inspectPod(t, pods[0]); st.Status.State != "SANDBOX_READY" {
		t.Errorf("the other pod: %s", st.Status.State)
	}
	for _, p := range pods {
		v.d.mustCrictl("rmp", "-f", p)
	}
}

// inspectPodOffline is a sandbox's state directory, without the daemon.
func (v *vmTest) inspectPodOffline(t *testing.T, pod string) string {
	t.Helper()
	return filepath.Join(v.d.dir, "state", "sandboxes", pod)
}

// TestPodBadInput: bad requests get a clear status and leave nothing.
func TestPodBadInput(t *testing.T) {
	v := newVMTest(t)
	ociImg := v.reg.Ref("demo/app", "1")
	push(t, v.reg, "demo/app", built(t)(testimage.OCI(testimage.OCIOptions{Seed: 7})), "1")
	v.d.mustCrictl("pull", ociImg)
	macos := v.reg.Ref("demo/macos", "15")
	push(t, v.reg, "demo/macos", built(t)(testimage.Tart(testimage.TartOptions{Seed: 8})), "15")
	v.d.mustCrictl("pull", macos)
	snapsBefore := v.snapshotDirs(t)
	podCfg := v.podConfig(t, "bad", nil)
	pod := v.runPod(t, podCfg)
	stateDir := v.inspectPod(t, pod).Info.StateDir
	badProfile := filepath.Join(t.TempDir(), "bad-seccomp.json")
	if err := os.WriteFile(badProfile, []byte(`{"defaultAction": `), 0o644); err != nil {
		t.Fatal(err)
	}
	secCtx := func(sc map[string]any) map[string]any {
		return map[string]any{"linux": map[string]any{"security_context": sc}}
	}

	cases := []struct {
		name, image string
		extra       map[string]any
		code, text  string
	}{
		{"unknown image", v.reg.Ref("macvz/nope", "1"), nil, "NotFound", "pull it first"},
		{"ordinary image", ociImg, nil, "FailedPrecondition", "ordinary container image"},
		{"invalid memory", v.plain, map[string]any{"linux": map[string]any{"resources": map[string]any{"memory_limit_in_bytes": 1000}}}, "InvalidArgument", "6 MiB"},
		{"missing hostPath", v.plain, map[string]any{"mounts": []map[string]any{{"container_path": "/x", "host_path": "/nonexistent/macvz-test"}}}, "NotFound", "/nonexistent/macvz-test"},
		{"relative container path", v.plain, map[string]any{"mounts": []map[string]any{{"container_path": "x", "host_path": "/tmp"}}}, "InvalidArgument", "not absolute"},
		// Container isolation: a Localhost seccomp profile is read at
		// create; a macOS guest cannot isolate one container.
		{"missing seccomp profile", v.plain, secCtx(map[string]any{"seccomp": map[string]any{"profile_type": 2, "localhost_ref": "/nonexistent/macvz-seccomp.json"}}), "NotFound", "/nonexistent/macvz-seccomp.json"},
		{"malformed seccomp profile", v.plain, secCtx(map[string]any{"seccomp": map[string]any{"profile_type": 2, "localhost_ref": badProfile}}), "InvalidArgument", "not an OCI seccomp profile"},
		{"macOS seccomp", macos, secCtx(map[string]any{"seccomp": map[string]any{"profile_type": 0}}), "Unimplemented", "macOS has no seccomp"},
		{"macOS PID namespace", macos, secCtx(map[string]any{"namespace_options": map[string]any{"pid": 1}}), "Unimplemented", "macOS has no PID namespaces"},
		{"macOS masked path", macos, secCtx(map[string]any{"masked_paths": []string{"/Users/admin/secret"}}), "Unimplemented", "macOS has no mount namespaces"},
	}
	for _, tc := range cases {
		out, err := v.d.crictl("create", pod, v.ctrConfig(t, "bad", tc.image, tc.extra), podCfg)
		if err == nil || !strings.Contains(out, "code = "+tc.code) || !strings.Contains(out, tc.text) {
			t.Errorf("%s: err %v, want %s mentioning %q; output:\n%s", tc.name, err, tc.code, tc.text, out)
		}
	}
	if out := v.d.mustCrictl("ps", "-a", "-q", "--pod", pod); strings.TrimSpace(out) != "" {
		t.Errorf("failed creates left containers: %q", out)
	}
	// A second, different VM image in one pod.
	c := strings.TrimSpace(v.d.mustCrictl("create", pod, v.ctrConfig(t, "first", v.plain, map[string]any{"command": []string{"sleep", "60"}}), podCfg))
	// The httpd guest boots the same VM (same layers, another default
	// process): fine. A macOS (Tart) image boots another: refused.
	second := strings.TrimSpace(v.d.mustCrictl("create", pod, v.ctrConfig(t, "same-vm", v.httpd, nil), podCfg))
	v.d.mustCrictl("rm", second)
	out, err := v.d.crictl("create", pod, v.ctrConfig(t, "second", macos, nil), podCfg)
	if err == nil || !strings.Contains(out, "FailedPrecondition") || !strings.Contains(out, "one VM image") {
		t.Errorf("second VM image: err %v, output:\n%s", err, out)
	}
	// Unknown IDs.
	for _, args := range [][]string{{"start", "0123456789ab"}, {"inspect", "0123456789ab"}, {"inspectp", "0123456789ab"}} {
		if out, err := v.d.crictl(args...); err == nil || !strings.Contains(out, "NotFound") {
			t.Errorf("crictl %v: err %v, output %q", args, err, out)
		}
	}
	// A sandbox with an invalid memory request.
	badPod := v.podConfig(t, "badres", map[string]any{"linux": map[string]any{"resources": map[string]any{"memory_limit_in_bytes": -5}}})
	if out, err := v.d.crictl("runp", badPod); err == nil || !strings.Contains(out, "InvalidArgument") {
		t.Errorf("runp with negative memory: err %v, output %q", err, out)
	}
	v.d.mustCrictl("rm", c)
	v.d.mustCrictl("rmp", "-f", pod)
	v.assertGone(t, pod, stateDir, snapsBefore)
	if out := v.d.mustCrictl("pods", "-q"); strings.TrimSpace(out) != "" {
		t.Errorf("pods left: %q", out)
	}
}

// TestPodVMLimit: with vm.max_linux_vms = 1 (the bound macOS hosts have
// at 2), a second VM is refused with ResourceExhausted naming the pod
// that holds the slot, leaving nothing; once that pod stops, it starts.
func TestPodVMLimit(t *testing.T) {
	v := newVMTestIn(t, nil, "[vm]\nmax_linux_vms = 1\n")
	cfgA := v.podConfig(t, "holder", nil)
	a := v.runPod(t, cfgA)
	v.startCtr(t, a, v.ctrConfig(t, "main", v.plain, map[string]any{"command": []string{"sleep", "3600"}}), cfgA)
	if out := v.d.mustCrictl("info"); !strings.Contains(out, `"type": "VMCapacity"`) || !strings.Contains(out, "Linux VMs: 1 of 1") {
		t.Errorf("crictl info lacks the full VMCapacity condition:\n%s", out)
	}
	cfgB := v.podConfig(t, "waiting", nil)
	b := v.runPod(t, cfgB)
	snaps := v.snapshotDirs(t)
	ctrB := strings.TrimSpace(v.d.mustCrictl("create", b, v.ctrConfig(t, "main", v.plain, map[string]any{"command": []string{"sleep", "3600"}}), cfgB))
	out, err := v.d.crictl("start", ctrB)
	if err == nil || !strings.Contains(out, "code = ResourceExhausted") || !strings.Contains(out, "holder_macvz-test_holder-uid_0 (") {
		t.Fatalf("second VM: err %v, want ResourceExhausted naming the holder; output:\n%s", err, out)
	}
	// As with containerd, a container whose start failed has exited;
	// kubelet creates a new one.
	if st := v.inspect(t, ctrB).Status.State; st != "CONTAINER_EXITED" {
		t.Errorf("the refused container is %s, want exited", st)
	}
	if ps := processesUnder(v.inspectPod(t, b).Info.StateDir); len(ps) > 0 {
		t.Errorf("a refused boot left processes:\n%s", strings.Join(ps, "\n"))
	}
	if n := v.snapshotDirs(t); n != snaps {
		t.Errorf("a refused boot left a disk clone (%d snapshot dirs, had %d)", n, snaps)
	}
	v.d.mustCrictl("stopp", a)
	ctrB = v.startCtr(t, b, v.ctrConfig(t, "retry", v.plain, map[string]any{"command": []string{"sleep", "3600"}}), cfgB)
	if got := v.execOut(t, ctrB, "echo", "booted"); got != "booted" {
		t.Errorf("exec in the second pod: %q", got)
	}
}

// TestPodBootInterrupted: the daemon is killed while StartContainer boots
// the pod's VM; the restarted daemon discards that boot (no shim or VM
// left), and the container can be started again (kubelet would create a
// new one).
func TestPodBootInterrupted(t *testing.T) {
	v := newVMTest(t)
	cfg := v.podConfig(t, "interrupted", nil)
	pod := v.runPod(t, cfg)
	stateDir := v.inspectPod(t, pod).Info.StateDir
	ctr := strings.TrimSpace(v.d.mustCrictl("create", pod, v.ctrConfig(t, "main", v.plain, map[string]any{"command": []string{"sleep", "3600"}}), cfg))
	started := make(chan error, 1)
	go func() { _, err := v.d.crictl("start", ctr); started <- err }()
	waitFor(t, "the VM's shim to start", time.Minute, func() bool { return len(processesUnder(stateDir)) > 0 })
	v.d.crash()
	<-started
	if ps := processesUnder(stateDir); len(ps) > 0 {
		t.Fatalf("an interrupted boot left processes after the restart:\n%s", strings.Join(ps, "\n"))
	}
	ctr2 := v.startCtr(t, pod, v.ctrConfig(t, "again", v.plain, map[string]any{"command": []string{"sleep", "3600"}}), cfg)
	if got := v.execOut(t, ctr2, "echo", "booted"); got != "booted" {
		t.Errorf("exec after booting again: %q", got)
	}
}

//go:build linux

package integration

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strings"
	"syscall"
	"testing"
	"text/template"
	"time"

	"golang.org/x/sys/unix"

	"github.com/macvz/macvz/integration/nettest"
	"github.com/macvz/macvz/integration/testimage"
	"github.com/macvz/macvz/integration/testutil"
	"github.com/macvz/macvz/internal/logbuf"
	"github.com/macvz/macvz/runtime/nodevm"
)

// kubeletNode is the node name the test kubelet runs as; static pods are
// named <manifest name>-<node>.
const kubeletNode = "macvz-e2e"

// kubelet is a standalone kubelet (no API server) started for a test,
// its static pods in manifests: natively in the daemon's network
// namespace (startKubelet), or in the node VM (kubelet_nodevm_test.go).
type kubelet struct {
	t *testing.T
	// dir holds kubelet's configuration and manifests (and, natively,
	// its root dir).
	dir       string
	manifests string
	// podsDir is kubelet's pods/ as the host sees it.
	podsDir string
	vars    map[string]any
	// get reads a path of kubelet's read-only port (10255).
	get func(path string) ([]byte, error)
	// logText is kubelet's log so far.
	logText func() string
	// exited is non-nil once kubelet has exited.
	exited func() error
	// slow multiplies the scenarios' timeouts: kubelet in the node VM
	// runs under TCG.
	slow int
	// node is the node VM kubelet runs in (nil: native).
	node *nodeVMKubelet

	// A native kubelet's network namespace, process and log.
	ns  *nettest.NetNS
	cmd *exec.Cmd
	log *logbuf.Buffer
}

// timeout is d for this kubelet.
func (k *kubelet) timeout(d time.Duration) time.Duration { return d * time.Duration(max(k.slow, 1)) }

// kubeletPaths are the host paths kubelet writes outside its root dir
// (fixed in kubelet, not configurable): the test removes what its pods
// left there, and the directories it made.
var kubeletPaths = []string{"/var/log/pods", "/var/log/containers", "/var/lib/kubelet/device-plugins", "/var/lib/kubelet"}

func requireKubelet(t *testing.T) string {
	t.Helper()
	bin := os.Getenv("KUBELET")
	if bin == "" {
		_, self, _, _ := runtime.Caller(0)
		bin = filepath.Join(filepath.Dir(self), "tools", "bin", "kubelet")
	}
	if _, err := os.Stat(bin); err != nil {
		testutil.Unavailable(t, "needs kubelet at %s: run `make tools` (builds kubernetes v1.37.2)", bin)
	}
	return bin
}

// startKubelet runs kubelet in ns with a generated KubeletConfiguration:
// both CRI endpoints on socket, static pods from its manifests directory,
// the read-only port 10255 on 127.0.0.1 for its view of the pods. vars
// fill the manifest templates (integration/kubelet/*.yaml).
func startKubelet(t *testing.T, ns *nettest.NetNS, socket string, vars map[string]any) *kubelet {
	t.Helper()
	bin := requireKubelet(t)
	testutil.RequireTool(t, "nsenter", "util-linux")
	existed := map[string]bool{}
	for _, p := range kubeletPaths {
		if _, err := os.Stat(p); err == nil {
			existed[p] = true
		}
	}
	dir, err := os.MkdirTemp("", "macvz-kubelet-")
	if err != nil {
		t.Fatal(err)
	}
	k := &kubelet{t: t, dir: dir, manifests: filepath.Join(dir, "manifests"), podsDir: filepath.Join(dir, "root", "pods"),
		ns: ns, log: &logbuf.Buffer{}, vars: vars, slow: 1}
	k.logText = k.log.String
	k.exited = func() error {
		if k.cmd.ProcessState != nil {
			return fmt.Errorf("kubelet exited: %v", k.cmd.ProcessState)
		}
		return nil
	}
	// Whatever happens, kubelet's traces outside its root go (step 3 of
	// issue 6): registered first, so it runs after kubelet has stopped.
	t.Cleanup(func() { k.cleanHost(existed) })
	if err := os.MkdirAll(k.manifests, 0o755); err != nil {
		t.Fatal(err)
	}
	cfgPath := writeKubeletConfig(t, dir, "containerRuntimeEndpoint: unix://"+socket+"\nimageServiceEndpoint: unix://"+socket+"\n")
	// nsenter switches only the network namespace: kubelet needs the
	// host's /sys (cgroups), which `ip netns exec` would replace.
	k.cmd = exec.Command("nsenter", "--net="+ns.Path, bin, "--config", cfgPath,
		"--root-dir", filepath.Join(dir, "root"), "--cert-dir", filepath.Join(dir, "pki"),
		"--hostname-override", kubeletNode, "--v", "2")
	k.cmd.Stdout, k.cmd.Stderr = k.log, k.log
	k.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := k.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		k.cmd.Process.Signal(syscall.SIGTERM)
		done := make(chan struct{})
		go func() { k.cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(20 * time.Second):
			k.cmd.Process.Kill()
			<-done
		}
		if t.Failed() {
			t.Logf("kubelet log (last 300 lines):\n%s", lastLines(k.log.String(), 300))
		}
		// The whole log goes to KUBELET_LOG when set.
		if p := os.Getenv("KUBELET_LOG"); p != "" {
			if err := os.WriteFile(p, []byte(k.log.String()), 0o644); err != nil {
				t.Error(err)
			}
		}
	})
	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) { return ns.Dial(network, addr) },
	}}
	k.get = func(path string) ([]byte, error) {
		resp, err := client.Get("http://127.0.0.1:10255" + path)
		if err != nil {
			return nil, err
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		if err == nil && resp.StatusCode != http.StatusOK {
			err = fmt.Errorf("GET %s: %s: %s", path, resp.Status, b)
		}
		return b, err
	}
	k.waitReadOnlyPort(t, 60*time.Second)
	return k
}

// writeKubeletConfig writes the test's KubeletConfiguration to
// dir/kubelet.yaml and returns its path: static pods from dir/manifests,
// the read-only port 10255 on 127.0.0.1 for the test's view of the pods;
// endpoints are its CRI endpoints' lines ("" for kubelet in the node VM,
// whose endpoints the daemon gives as flags).
func writeKubeletConfig(t *testing.T, dir, endpoints string) string {
	t.Helper()
	cfg := fmt.Sprintf(`apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
staticPodPath: %[1]s/manifests
fileCheckFrequency: 2s
%[2]sruntimeRequestTimeout: 4m
address: 127.0.0.1
readOnlyPort: 10255
healthzBindAddress: 127.0.0.1
authentication:
  anonymous:
    enabled: true
  webhook:
    enabled: false
authorization:
  mode: AlwaysAllow
cgroupDriver: cgroupfs
cgroupsPerQOS: false
enforceNodeAllocatable: []
failSwapOn: false
failCgroupV1: false
volumePluginDir: %[1]s/volume-plugins
serializeImagePulls: false
# The test host's disk may be fuller than kubelet's defaults allow; this
# test is not about eviction or image garbage collection.
evictionHard:
  memory.available: 100Mi
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
# GetContainerEvents drives kubelet's relists, and kubelet lists pods,
# containers, images and stats through the Stream* verbs (issue 18).
featureGates:
  EventedPLEG: true
  CRIListStreaming: true
`, dir, endpoints)
	cfgPath := filepath.Join(dir, "kubelet.yaml")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	return cfgPath
}

// waitReadOnlyPort waits until kubelet answers on its read-only port.
func (k *kubelet) waitReadOnlyPort(t *testing.T, timeout time.Duration) {
	t.Helper()
	waitFor(t, "kubelet's read-only port", timeout, func() bool {
		if err := k.exited(); err != nil {
			t.Fatalf("%v\n%s", err, lastLines(k.logText(), 100))
		}
		_, err := k.pods()
		return err == nil
	})
}

// cleanHost unmounts what kubelet mounted under its directory (it
// bind-mounts its root dir onto itself), removes the directory and what
// the test's pods left in kubelet's fixed host paths, and the paths
// themselves when kubelet created them.
func (k *kubelet) cleanHost(existed map[string]bool) {
	ms := mountsUnder(k.dir)
	for i := len(ms) - 1; i >= 0; i-- {
		if err := unix.Unmount(ms[i], unix.MNT_DETACH); err != nil {
			k.t.Errorf("unmounting %s: %v", ms[i], err)
		}
	}
	if err := os.RemoveAll(k.dir); err != nil {
		k.t.Errorf("removing kubelet's directory: %v", err)
	}
	for _, glob := range []string{"/var/log/pods/*_*-" + kubeletNode + "_*", "/var/log/containers/*-" + kubeletNode + "_*"} {
		ms, _ := filepath.Glob(glob)
		for _, m := range ms {
			os.RemoveAll(m)
		}
	}
	for _, p := range kubeletPaths {
		if existed[p] {
			continue
		}
		if p == "/var/lib/kubelet/device-plugins" {
			// Only kubelet's own checkpoint and socket are in it.
			os.RemoveAll(p)
			continue
		}
		if err := os.Remove(p); err != nil && !os.IsNotExist(err) {
			k.t.Errorf("kubelet left %s: %v", p, err)
		}
	}
}

// apply writes the static pod manifest integration/kubelet/<name>.yaml,
// filled from k.vars, and returns when it was written. The file appears
// whole (a rename): kubelet ignores dot files.
func (k *kubelet) apply(t *testing.T, name string) time.Time {
	t.Helper()
	src, err := os.ReadFile(filepath.Join("kubelet", name+".yaml"))
	if err != nil {
		t.Fatal(err)
	}
	tmpl, err := template.New(name).Option("missingkey=error").Parse(string(src))
	if err != nil {
		t.Fatal(err)
	}
	var b bytes.Buffer
	if err := tmpl.Execute(&b, k.vars); err != nil {
		t.Fatal(err)
	}
	tmp := filepath.Join(k.manifests, "."+name+".yaml")
	if err := os.WriteFile(tmp, b.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, filepath.Join(k.manifests, name+".yaml")); err != nil {
		t.Fatal(err)
	}
	return time.Now()
}

// remove deletes a static pod's manifest: kubelet stops and removes it.
func (k *kubelet) remove(t *testing.T, name string) {
	t.Helper()
	if err := os.Remove(filepath.Join(k.manifests, name+".yaml")); err != nil {
		t.Fatal(err)
	}
}

// kubePod is the part of a v1.Pod this test reads from kubelet's /pods.
type kubePod struct {
	Metadata struct {
		Name string `json:"name"`
		UID  string `json:"uid"`
	} `json:"metadata"`
	Status struct {
		Phase      string `json:"phase"`
		Conditions []struct {
			Type   string `json:"type"`
			Status string `json:"status"`
		} `json:"conditions"`
		InitContainerStatuses []kubeContainer `json:"initContainerStatuses"`
		ContainerStatuses     []kubeContainer `json:"containerStatuses"`
	} `json:"status"`
}

type kubeContainer struct {
	Name         string    `json:"name"`
	Ready        bool      `json:"ready"`
	RestartCount int       `json:"restartCount"`
	ContainerID  string    `json:"containerID"`
	State        kubeState `json:"state"`
	LastState    kubeState `json:"lastState"`
}

type kubeState struct {
	Waiting *struct {
		Reason  string `json:"reason"`
		Message string `json:"message"`
	} `json:"waiting"`
	Running *struct {
		StartedAt time.Time `json:"startedAt"`
	} `json:"running"`
	Terminated *struct {
		ExitCode   int       `json:"exitCode"`
		Reason     string    `json:"reason"`
		StartedAt  time.Time `json:"startedAt"`
		FinishedAt time.Time `json:"finishedAt"`
	} `json:"terminated"`
}

// id is the CRI container ID (kubelet shows "macvz://<id>").
func (c kubeContainer) id() string {
	_, id, _ := strings.Cut(c.ContainerID, "://")
	return id
}

// pods is kubelet's own view: GET http://127.0.0.1:10255/pods.
func (k *kubelet) pods() ([]kubePod, error) {
	b, err := k.get("/pods")
	if err != nil {
		return nil, err
	}
	var list struct {
		Items []kubePod `json:"items"`
	}
	if err := json.Unmarshal(b, &list); err != nil {
		return nil, err
	}
	return list.Items, nil
}

// pod is the static pod made from manifest name, nil while kubelet does
// not list it.
func (k *kubelet) pod(t *testing.T, name string) *kubePod {
	t.Helper()
	pods, err := k.pods()
	if err != nil {
		t.Fatal(err)
	}
	for i := range pods {
		if pods[i].Metadata.Name == name+"-"+kubeletNode {
			return &pods[i]
		}
	}
	return nil
}

// waitPod polls kubelet's view of a pod until cond holds and returns it.
func (k *kubelet) waitPod(t *testing.T, name, what string, timeout time.Duration, cond func(*kubePod) bool) *kubePod {
	t.Helper()
	var last *kubePod
	timeout = k.timeout(timeout)
	deadline := time.Now().Add(timeout)
	for {
		if err := k.exited(); err != nil {
			t.Fatal(err)
		}
		last = k.pod(t, name)
		if last != nil && cond(last) {
			return last
		}
		if time.Now().After(deadline) {
			b, _ := json.MarshalIndent(last, "", "  ")
			t.Fatalf("pod %s: timed out after %v waiting for %s; kubelet shows:\n%s", name, timeout, what, b)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// container is a container's status in kubelet's view.
func (p *kubePod) container(name string) kubeContainer {
	for _, c := range append(p.Status.InitContainerStatuses, p.Status.ContainerStatuses...) {
		if c.Name == name {
			return c
		}
	}
	return kubeContainer{}
}

func (p *kubePod) ready() bool {
	for _, c := range p.Status.Conditions {
		if c.Type == "Ready" {
			return c.Status == "True"
		}
	}
	return false
}

// logFile is kubelet's log file of a container's run.
func (k *kubelet) logFile(p *kubePod, ctr string, restart int) string {
	return filepath.Join("/var/log/pods", fmt.Sprintf("default_%s_%s", p.Metadata.Name, p.Metadata.UID), ctr, fmt.Sprintf("%d.log", restart))
}

// logLines is what a container run wrote, from kubelet's log file (the
// CRI log format's message part).
func (k *kubelet) logLines(t *testing.T, p *kubePod, ctr string, restart int) []string {
	t.Helper()
	b, err := os.ReadFile(k.logFile(p, ctr, restart))
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	if len(b) == 0 {
		return nil
	}
	for _, l := range strings.Split(strings.TrimRight(string(b), "\n"), "\n") {
		m := criLogLine.FindStringSubmatch(l)
		if m == nil {
			t.Fatalf("%s: not a CRI log line: %q", k.logFile(p, ctr, restart), l)
		}
		out = append(out, m[1]+" "+m[3])
	}
	return out
}

func lastLines(s string, n int) string {
	ls := strings.Split(s, "\n")
	return strings.Join(ls[max(0, len(ls)-n):], "\n")
}

// TestKubelet runs an unmodified kubelet (v1.37.2, standalone) against
// macvz on QEMU: static pods for what users do, each checked through
// kubelet's own view, its log files and crictl; a macvz restart under
// running pods; removal of every manifest leaving nothing behind.
// `make kubelet-e2e` runs only this; TestKubeletNodeVM runs the same
// scenarios with kubelet in the node VM.
func TestKubelet(t *testing.T) {
	requireKubelet(t)
	testKubeletScenarios(t, kubeletRunner{
		daemon: newNetTest,
		kubelet: func(t *testing.T, n *netTest, vars map[string]any) *kubelet {
			vars["HostDir"] = t.TempDir()
			vars["ProbeTimeout"] = 1 // kubelet's default
			return startKubelet(t, n.ns, n.d.socket, vars)
		},
	})
}

// kubeletRunner is where the scenarios' kubelet runs.
type kubeletRunner struct {
	// daemon starts macvz in a network namespace of its own, on the
	// bridge-tap network.
	daemon func(t *testing.T) *netTest
	// kubelet starts kubelet against n's daemon, or waits for the one
	// that runs; it adds to vars the manifests' HostDir (a directory
	// kubelet and the host see at one path) and ProbeTimeout (seconds).
	kubelet func(t *testing.T, n *netTest, vars map[string]any) *kubelet
}

// testKubeletScenarios is TestKubelet's body, with kubelet where r puts
// it.
func testKubeletScenarios(t *testing.T, r kubeletRunner) {
	n := r.daemon(t)
	hostPort := 18080
	// The image bases only: kubelet pulls the images again (itself) and
	// every pod's disk clone must be gone at the end.
	snapshotsBefore := n.snapshotDirs(t)
	n.d.mustCrictl("rmi", n.plain, n.httpd)

	// An ordinary OCI image for the imagevol pod's image volume.
	tools, err := testimage.OCI(testimage.OCIOptions{Layers: [][]testimage.File{
		{{Path: "/bin/greet", Data: []byte("#!/bin/sh\necho greetings from an image volume\n"), Mode: 0o755}},
		{{Path: "/data/set.csv", Data: []byte("a,b\n1,2\n")}},
	}})
	if err != nil {
		t.Fatal(err)
	}
	if err := n.reg.Push(context.Background(), "macvz/kubelet-tools", "1", tools); err != nil {
		t.Fatal(err)
	}

	k := r.kubelet(t, n, map[string]any{"Plain": n.plain, "HTTPD": n.httpd, "HostPort": hostPort, "Tools": n.pullHost + "/macvz/kubelet-tools:1"})
	hostDir := k.vars["HostDir"].(string)

	// Each pod goes in alone, so its time from manifest to Running is
	// its own (the first one includes pulling the image).
	// Running: kubelet's phase, and every container started (a crash
	// looping one: it ran and exited).
	running := func(p *kubePod) bool {
		if p.Status.Phase != "Running" || len(p.Status.ContainerStatuses) == 0 {
			return false
		}
		for _, c := range p.Status.ContainerStatuses {
			exited := c.LastState.Terminated != nil && c.LastState.Terminated.Reason == "Error"
			if c.State.Running == nil && !exited {
				return false
			}
		}
		return true
	}
	took := map[string]time.Duration{}
	order := []string{"logger", "probes", "crash", "init", "config", "sized", "imagevol", "web"}
	pods := map[string]*kubePod{}
	for _, name := range order {
		at := k.apply(t, name)
		pods[name] = k.waitPod(t, name, "phase Running, containers started", 3*time.Minute, running)
		took[name] = time.Since(at)
		t.Logf("pod %s: manifest → Running in %v", name, took[name].Round(10*time.Millisecond))
	}

	// Every pod is one sandbox in crictl, and kubelet's containers are
	// macvz's.
	sandbox := map[string]string{}
	stateDirs := map[string]string{}
	for _, name := range order {
		id := strings.TrimSpace(n.d.mustCrictl("pods", "-q", "--name", "^"+name+"-"+kubeletNode+"$", "--state", "ready"))
		if id == "" || strings.Contains(id, "\n") {
			t.Fatalf("pod %s: crictl pods shows sandboxes %q, want one ready", name, id)
		}
		sandbox[name] = id
		stateDirs[name] = n.inspectPod(t, id).Info.StateDir
	}

	t.Run("logs", func(t *testing.T) {
		p := k.waitPod(t, "logger", "container ready", time.Minute, func(p *kubePod) bool { return p.container("logger").Ready })
		want := []string{"stdout logger line 1", "stdout logger line 2", "stdout logger line 3", "stderr logger to stderr"}
		waitFor(t, "the logger's lines in kubelet's log file", k.timeout(30*time.Second), func() bool {
			got := k.logLines(t, p, "logger", 0)
			slices.Sort(got) // stdout and stderr are written by separate copiers
			w := slices.Clone(want)
			slices.Sort(w)
			return slices.Equal(got, w)
		})
		st := n.inspect(t, p.container("logger").id())
		if st.Status.State != "CONTAINER_RUNNING" {
			t.Errorf("crictl inspect: %s", st.Status.State)
		}
		// kubectl logs reads /var/log/containers/<pod>_<ns>_<ctr>-<id>.log.
		link := fmt.Sprintf("/var/log/containers/%s_default_logger-%s.log", p.Metadata.Name, p.container("logger").id())
		if target, err := filepath.EvalSymlinks(link); err != nil || target != k.logFile(p, "logger", 0) {
			t.Errorf("%s → %q, %v; want %s", link, target, err, k.logFile(p, "logger", 0))
		}
	})

	t.Run("config", func(t *testing.T) {
		p := pods["config"]
		ctr := p.container("app").id()
		want := []string{"stdout greeting=hello from kubelet pod=config-" + kubeletNode + " pwd=/srv/app"}
		waitFor(t, "the config pod's line", k.timeout(30*time.Second), func() bool { return slices.Equal(k.logLines(t, p, "app", 0), want) })
		if got := n.execOut(t, ctr, "cat", "/data/scratch/file"); got != "scratch" {
			t.Errorf("emptyDir in the guest: %q", got)
		}
		b, err := os.ReadFile(filepath.Join(hostDir, "from-guest"))
		if err != nil || string(b) != "written by the guest\n" {
			t.Errorf("hostPath on the host: %q, %v", b, err)
		}
		// The emptyDir is kubelet's directory, shared into the VM.
		empty := filepath.Join(k.podsDir, p.Metadata.UID, "volumes", "kubernetes.io~empty-dir", "scratch", "file")
		if b, err := os.ReadFile(empty); err != nil || string(b) != "scratch\n" {
			t.Errorf("emptyDir on the host (%s): %q, %v", empty, b, err)
		}
		os.WriteFile(filepath.Join(hostDir, "from-host"), []byte("written by the host\n"), 0o644)
		if got := n.execOut(t, ctr, "cat", "/data/host/from-host"); got != "written by the host" {
			t.Errorf("hostPath file written on the host, in the guest: %q", got)
		}
	})

	t.Run("sized", func(t *testing.T) {
		ctr := pods["sized"].container("app").id()
		if got, want := n.execOut(t, ctr, "nproc"), fmt.Sprint(min(2, runtime.NumCPU())); got != want {
			t.Errorf("sized pod: nproc %s, want %s (limit 1500m)", got, want)
		}
		var kb int64
		fmt.Sscanf(n.execOut(t, ctr, "sh", "-c", "grep MemTotal /proc/meminfo | tr -s ' ' | cut -d' ' -f2"), "%d", &kb)
		if mib := kb >> 10; mib <= 240 || mib > 320 {
			t.Errorf("sized pod: MemTotal %d MiB, want a VM of 320 MiB", mib)
		}
		// Without resources: the configured default (1 CPU, 512 MiB).
		other := pods["logger"].container("logger").id()
		if got := n.execOut(t, other, "nproc"); got != "1" {
			t.Errorf("pod without resources: nproc %s, want 1", got)
		}
	})

	t.Run("stats", func(t *testing.T) {
		// kubectl top and metrics-server read kubelet's summary, which
		// kubelet fills from the CRI stats calls.
		b, err := k.get("/stats/summary")
		if err != nil {
			t.Fatal(err)
		}
		var summary struct {
			Pods []struct {
				PodRef struct {
					Name string `json:"name"`
				} `json:"podRef"`
				Containers []struct {
					Name string `json:"name"`
					CPU  struct {
						UsageCoreNanoSeconds uint64 `json:"usageCoreNanoSeconds"`
					} `json:"cpu"`
					Memory struct {
						WorkingSetBytes uint64 `json:"workingSetBytes"`
					} `json:"memory"`
				} `json:"containers"`
			} `json:"pods"`
		}
		if err := json.Unmarshal(b, &summary); err != nil {
			t.Fatal(err)
		}
		seen := map[string]bool{}
		for _, p := range summary.Pods {
			for _, c := range p.Containers {
				seen[p.PodRef.Name] = true
				if c.CPU.UsageCoreNanoSeconds == 0 || c.Memory.WorkingSetBytes == 0 {
					t.Errorf("/stats/summary: pod %s container %s: cpu %d ns, working set %d bytes", p.PodRef.Name, c.Name,
						c.CPU.UsageCoreNanoSeconds, c.Memory.WorkingSetBytes)
				}
			}
		}
		for _, name := range []string{"logger", "sized", "web"} {
			if !seen[name+"-"+kubeletNode] {
				t.Errorf("/stats/summary has no container stats for pod %s", name)
			}
		}
	})

	t.Run("hostPort", func(t *testing.T) {
		// Ready means kubelet's HTTP readiness probe reached the pod IP.
		k.waitPod(t, "web", "container ready", time.Minute, func(p *kubePod) bool { return p.container("httpd").Ready })
		addr := fmt.Sprintf("127.0.0.1:%d", hostPort)
		var body string
		waitFor(t, "the hostPort to answer", k.timeout(30*time.Second), func() bool {
			var err error
			body, err = n.httpGet(addr)
			return err == nil && strings.Contains(body, "200 OK")
		})
	})

	t.Run("init", func(t *testing.T) {
		p := k.waitPod(t, "init", "main container running", time.Minute, func(p *kubePod) bool { return p.container("main").State.Running != nil })
		ic, mc := p.container("prepare"), p.container("main")
		if ic.State.Terminated == nil || ic.State.Terminated.ExitCode != 0 || ic.State.Terminated.Reason != "Completed" {
			t.Fatalf("init container: %+v", ic.State)
		}
		if mc.State.Running.StartedAt.Before(ic.State.Terminated.FinishedAt) {
			t.Errorf("main started at %v, before the init container finished at %v", mc.State.Running.StartedAt, ic.State.Terminated.FinishedAt)
		}
		waitFor(t, "the main container's line", k.timeout(30*time.Second), func() bool {
			return slices.Equal(k.logLines(t, p, "main", 0), []string{"stdout prepared by the init container"})
		})
		if got := strings.TrimSpace(n.d.mustCrictl("ps", "-a", "-q", "--pod", sandbox["init"])); strings.Count(got, "\n") != 1 {
			t.Errorf("init pod: containers %q, want the init container and main in one sandbox", got)
		}
	})

	t.Run("imageVolume", func(t *testing.T) {
		p := pods["imagevol"]
		want := []string{"stdout greetings from an image volume", "stdout a,b", "stdout 1,2", "stdout read-only"}
		waitFor(t, "the imagevol pod's lines", k.timeout(30*time.Second), func() bool {
			return slices.Equal(k.logLines(t, p, "app", 0), want)
		})
		// The container's mounts name the image, by its ID.
		var st struct {
			Status struct {
				Mounts []struct {
					ContainerPath string `json:"containerPath"`
					Image         struct {
						ImageRef string `json:"imageRef"`
					} `json:"image"`
				} `json:"mounts"`
			} `json:"status"`
		}
		if err := json.Unmarshal([]byte(n.d.mustCrictl("inspect", "-o", "json", p.container("app").id())), &st); err != nil {
			t.Fatal(err)
		}
		fromImage := 0
		for _, m := range st.Status.Mounts {
			if (m.ContainerPath == "/tools" || m.ContainerPath == "/data") && strings.HasPrefix(m.Image.ImageRef, "sha256:") {
				fromImage++
			}
		}
		if fromImage != 2 {
			t.Errorf("crictl inspect: mounts %+v; want /tools and /data from the image", st.Status.Mounts)
		}
	})

	t.Run("eventedPLEG", func(t *testing.T) {
		// kubelet runs with EventedPLEG on (writeKubeletConfig): it holds
		// a GetContainerEvents stream to the daemon and times every event
		// it gets; the pods above converged with it (the init pod
		// creates its init container once: checked just above).
		m, err := k.get("/metrics")
		if err != nil {
			t.Fatal(err)
		}
		conns, _ := promValue(string(m), "kubelet_evented_pleg_connection_success_count", "")
		events, _ := promValue(string(m), "kubelet_evented_pleg_connection_latency_seconds_count", "")
		if conns < 1 || events < 1 {
			var pleg []string
			for _, l := range strings.Split(string(m), "\n") {
				if strings.Contains(l, "pleg") && !strings.HasPrefix(l, "#") {
					pleg = append(pleg, l)
				}
			}
			t.Fatalf("kubelet's evented PLEG: %v stream connections, %v events received; want both ≥ 1; its PLEG metrics:\n%s", conns, events, strings.Join(pleg, "\n"))
		}
		if errs, _ := promValue(string(m), "kubelet_evented_pleg_connection_error_count", ""); errs > 0 {
			t.Errorf("kubelet's evented PLEG: %v stream errors", errs)
		}
		t.Logf("kubelet's evented PLEG: %v stream connection(s), %v container events received", conns, events)
	})

	t.Run("probes", func(t *testing.T) {
		p := k.waitPod(t, "probes", "ready", time.Minute, func(p *kubePod) bool { return p.ready() && p.container("app").Ready })
		if rc := p.container("app").RestartCount; rc != 0 {
			t.Fatalf("probes pod restarted %d times before its liveness probe was made to fail", rc)
		}
		first := p.container("app").id()
		boot := n.execOut(t, first, "cat", "/proc/sys/kernel/random/boot_id")
		n.execOut(t, first, "touch", "/tmp/die")
		p = k.waitPod(t, "probes", "restart after the failed liveness probe, ready again", 2*time.Minute, func(p *kubePod) bool {
			c := p.container("app")
			return c.RestartCount >= 1 && c.Ready
		})
		c := p.container("app")
		if c.RestartCount != 1 {
			t.Errorf("restartCount %d, want 1 (the liveness probe fails once)", c.RestartCount)
		}
		if c.id() == first {
			t.Errorf("container %s was not replaced", first)
		}
		if got := n.execOut(t, c.id(), "cat", "/proc/sys/kernel/random/boot_id"); got != boot {
			t.Errorf("the restarted container runs in another VM (boot_id %s, was %s)", got, boot)
		}
		if got := strings.TrimSpace(n.d.mustCrictl("pods", "-q", "--name", "^probes-"+kubeletNode+"$")); got != sandbox["probes"] {
			t.Errorf("sandboxes after the restart: %q, want only %s", got, sandbox["probes"])
		}
		if !slices.Contains(k.logLines(t, p, "app", 1), "stdout probes app started") {
			t.Errorf("the restarted container's log (1.log) lacks its start line")
		}
	})

	t.Run("crashLoop", func(t *testing.T) {
		// kubelet doubles the back-off after each failure: 10 s, 20 s, ...
		// It says so in the container's waiting state, which a poll of
		// /pods can miss, and in its log, which the test has whole.
		backOff := regexp.MustCompile(`back-off (\S+) restarting failed container=crash `)
		grown := func(text string) bool {
			for _, m := range backOff.FindAllStringSubmatch(text, -1) {
				if d, err := time.ParseDuration(m[1]); err == nil && d >= 20*time.Second {
					return true
				}
			}
			return false
		}
		sawBackOff := false
		p := k.waitPod(t, "crash", "two restarts, the back-off grown past 10s", 3*time.Minute, func(p *kubePod) bool {
			c := p.container("crash")
			if w := c.State.Waiting; w != nil && w.Reason == "CrashLoopBackOff" {
				sawBackOff = sawBackOff || grown(w.Message+" ")
			}
			return c.RestartCount >= 2 && (sawBackOff || grown(k.logText()))
		})
		c := p.container("crash")
		if lt := c.LastState.Terminated; lt == nil || lt.ExitCode != 1 || lt.Reason != "Error" {
			t.Errorf("last state: %+v, want exit code 1 (Error)", c.LastState)
		}
		// kubelet keeps the last dead container's log (N.log, N = its
		// attempt); older ones go with their containers.
		// The newest may be a run that is just starting (still empty).
		logs, _ := filepath.Glob(filepath.Join(filepath.Dir(k.logFile(p, "crash", 0)), "*.log"))
		written := 0
		for _, l := range logs {
			var restart int
			fmt.Sscanf(filepath.Base(l), "%d.log", &restart)
			got := k.logLines(t, p, "crash", restart)
			if got == nil {
				continue
			}
			written++
			if !slices.Equal(got, []string{"stdout crash run"}) {
				t.Errorf("%s: %q", l, got)
			}
		}
		if written == 0 {
			t.Errorf("no log of a finished run of the crashing container (files: %v)", logs)
		}
		if got := strings.TrimSpace(n.d.mustCrictl("pods", "-q", "--name", "^crash-"+kubeletNode+"$")); got != sandbox["crash"] {
			t.Errorf("sandboxes of the crashing pod: %q, want only %s (restarts reuse the VM)", got, sandbox["crash"])
		}
	})
	if t.Failed() {
		return
	}

	t.Run("macvzRestart", func(t *testing.T) {
		// A pod that crash-loops restarts on its own; the rest must not.
		k.remove(t, "crash")
		steady := []string{"logger", "probes", "init", "config", "sized", "imagevol", "web"}
		before := map[string]kubeContainer{}
		for _, name := range steady {
			p := k.pod(t, name)
			for _, c := range p.Status.ContainerStatuses {
				before[name+"/"+c.Name] = c
			}
		}
		// kubelet in the node VM: the VM outlives the daemon (as every
		// VM does) and the new daemon adopts it, kubelet still running.
		var node nodevm.Status
		if k.node != nil {
			node = k.node.beforeRestart(t)
		}
		n.d.stop()
		n.d.start()
		// Long enough for several PLEG relists and probe periods.
		time.Sleep(20 * time.Second)
		if k.node != nil {
			k.node.assertAdopted(t, node)
		}
		for _, name := range steady {
			p := k.pod(t, name)
			if p.Status.Phase != "Running" {
				t.Errorf("pod %s after the restart: phase %s", name, p.Status.Phase)
			}
			for _, c := range p.Status.ContainerStatuses {
				b := before[name+"/"+c.Name]
				if c.RestartCount != b.RestartCount || c.ContainerID != b.ContainerID || c.State.Running == nil {
					t.Errorf("pod %s container %s: restartCount %d → %d, id %s → %s, state %+v", name, c.Name,
						b.RestartCount, c.RestartCount, b.id(), c.id(), c.State)
				}
			}
			if !p.ready() {
				t.Errorf("pod %s not ready after the restart", name)
			}
		}
		if got := strings.TrimSpace(n.d.mustCrictl("pods", "-q", "--state", "ready")); strings.Count(got, "\n")+1 != len(steady) {
			t.Errorf("ready sandboxes after the restart:\n%s", got)
		}
	})

	t.Run("removal", func(t *testing.T) {
		start := time.Now()
		for _, name := range order {
			if name != "crash" {
				k.remove(t, name)
			}
		}
		// kubelet stops the pods at once and removes their sandboxes in
		// its next container garbage collection (every minute).
		waitFor(t, "kubelet to remove every sandbox", k.timeout(3*time.Minute), func() bool {
			return strings.TrimSpace(n.d.mustCrictl("pods", "-q")) == ""
		})
		t.Logf("all manifests removed → every sandbox removed in %v", time.Since(start).Round(10*time.Millisecond))
		if pods, err := k.pods(); err != nil || len(pods) != 0 {
			t.Errorf("kubelet still lists %d pods (%v)", len(pods), err)
		}
		// The image volume's unpacked tree is the image's: it goes with
		// the image, which kubelet's image GC leaves on a node this empty.
		n.d.mustCrictl("rmi", k.vars["Tools"].(string))
		for _, name := range order {
			n.assertGone(t, sandbox[name], stateDirs[name], snapshotsBefore)
		}
		n.assertNetClean(t, "after kubelet removed the pods")
		if ps := k.withoutNodeVM(processesUnder(filepath.Join(n.d.dir, "state"))); len(ps) > 0 {
			t.Errorf("processes left:\n%s", strings.Join(ps, "\n"))
		}
	})

	for _, name := range order {
		t.Logf("manifest → Running: %-7s %v", name, took[name].Round(10*time.Millisecond))
	}
}

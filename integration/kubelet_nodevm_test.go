//go:build linux

package integration

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/macvz/macvz/integration/guest"
	"github.com/macvz/macvz/runtime/agentapi"
	"github.com/macvz/macvz/runtime/nodevm"
	"github.com/macvz/macvz/runtime/shim"
)

// TestKubeletNodeVM runs TestKubelet's scenarios a second time with
// kubelet in the node VM (QEMU/TCG): the daemon's [node] section runs
// the same kubelet (v1.37.2) with the same KubeletConfiguration, its
// configuration and manifests directory, the pods' hostPath directory,
// /var/lib/kubelet/pods, /var/log/pods and /var/log/containers shared
// at their host paths; kubelet's root dir is the VM's /var/lib/kubelet
// (a tmpfs cAdvisor knows). The test reads kubelet's read-only port
// through the node VM's agent and its log from the node VM's log file.
// Every scenario runs; the macvz restart also checks that the node VM
// and kubelet outlive the daemon and are adopted, not made again.
//
// Secret, ConfigMap and projected service-account token volumes need an
// API server, which a standalone kubelet has not (static pods cannot
// use them): the cluster e2e covers them (TestCluster, scenario
// nodevm); TestNodeVM covers the node VM's memory-backed volumes
// (downwardAPI, Memory emptyDir) on the host.
func TestKubeletNodeVM(t *testing.T) {
	requireKubelet(t)
	nv := &nodeVMKubelet{}
	testKubeletScenarios(t, kubeletRunner{daemon: nv.daemon, kubelet: nv.kubelet})
}

// nodeVMKubelet is the node VM TestKubeletNodeVM's kubelet runs in.
type nodeVMKubelet struct {
	d *daemon
	// kube is kubelet's configuration and manifests directory; hostDir
	// the manifests' hostPath, in it.
	kube, hostDir string
	logPath       string

	mu sync.Mutex
	// shim is the test's own connection to the node VM's shim.
	shim *shim.Client
	// container is kubelet's, as the node VM first ran; checked is
	// when exited last looked.
	container string
	checked   time.Time
}

// nodeVMHostPaths are the host paths kubelet in the node VM writes
// through its shares, fixed in kubelet: made when missing, and removed
// again then.
var nodeVMHostPaths = []string{"/var/lib/kubelet", "/var/lib/kubelet/pods", "/var/log/pods", "/var/log/containers"}

// daemon starts macvz in a network namespace on the bridge-tap network
// (as newNetTest does) with the node VM, and returns once the node VM
// runs.
func (nv *nodeVMKubelet) daemon(t *testing.T) *netTest {
	t.Helper()
	nn := startNodeVMNet(t, "pods")
	ns, ipamDir, confDir, bin, nodeHost := nn.ns, nn.ipamDir, nn.confDir, nn.binDir, nn.registry

	// Registered before the daemon, so it runs after the daemon's
	// cleanup has removed what pods a failed run left.
	made := map[string]bool{}
	t.Cleanup(func() { nv.cleanHost(t, made) })
	for _, p := range nodeVMHostPaths {
		if _, err := os.Stat(p); os.IsNotExist(err) {
			if err := os.Mkdir(p, 0o755); err != nil {
				t.Fatal(err)
			}
			made[p] = true
		}
	}
	var err error
	nv.kube, err = os.MkdirTemp("", "mvzkube")
	if err != nil {
		t.Fatal(err)
	}
	nv.hostDir = filepath.Join(nv.kube, "host")
	for _, d := range []string{"manifests", "host"} {
		if err := os.Mkdir(filepath.Join(nv.kube, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	cfg := writeKubeletConfig(t, nv.kube, "")
	// 1 GiB and one CPU: kubelet's needs (the scenarios' pods are sized
	// by their own VMs).
	v := newVMTestIn(t, ns, fmt.Sprintf(`
[network]
conf_dir = %q
bin_dirs = [%q]

[registry.hosts.%q]
insecure = true

[node]
enabled = true
image = %q
kubelet_args = [%s]
shares = [%s]
cpus = 1
memory_bytes = %d
`, confDir, bin, nodeHost, nodeHost+"/macvz/node:"+guest.RefNode,
		quotedList("--config="+cfg, "--hostname-override="+kubeletNode, "--v=2"),
		quotedList(nv.kube, "/var/lib/kubelet/pods", "/var/log/pods", "/var/log/containers"), 1<<30))
	nv.d = v.d
	// The node VM is no pod: the daemon's cleanup (crictl rmp -a) does
	// not see it, and fails the test for its processes. Runs first.
	t.Cleanup(func() {
		if t.Failed() && nv.logPath != "" {
			b, _ := os.ReadFile(nv.logPath)
			t.Logf("kubelet's log in the node VM (last 300 lines):\n%s", lastLines(string(b), 300))
		}
		if p := os.Getenv("KUBELET_LOG"); p != "" && nv.logPath != "" {
			if b, err := os.ReadFile(nv.logPath); err == nil {
				os.WriteFile(p, b, 0o644)
			}
		}
		nv.mu.Lock()
		if nv.shim != nil {
			nv.shim.Close()
		}
		nv.mu.Unlock()
		id := nv.status().SandboxID
		if out, err := nv.cli("stop"); err != nil {
			t.Errorf("macvz node stop: %v\n%s", err, out)
		}
		waitFor(t, "the node VM stopped", time.Minute, func() bool { return nv.status().State == "stopped" })
		if id != "" {
			dir := filepath.Join(nv.d.state, "sandboxes", id)
			waitFor(t, "the node VM's processes gone", time.Minute, func() bool { return len(processesUnder(dir)) == 0 })
		}
	})
	start := time.Now()
	waitFor(t, "the node VM running (macvz node status)", 4*time.Minute, func() bool { return nv.status().State == "running" })
	st := nv.status()
	nv.logPath, nv.container = st.LogPath, st.ContainerID
	t.Logf("node VM running %v after the daemon's start (sandbox %.12s)", time.Since(start).Round(10*time.Millisecond), st.SandboxID)
	return &netTest{vmTest: v, ns: ns, ipamDir: ipamDir}
}

// kubelet is the node VM's kubelet, once its read-only port answers.
func (nv *nodeVMKubelet) kubelet(t *testing.T, n *netTest, vars map[string]any) *kubelet {
	t.Helper()
	vars["HostDir"] = nv.hostDir
	// An exec probe's timeout includes starting the exec in the pod's
	// VM, which with the node VM's TCG kubelet busy on the same cores
	// took over kubelet's default 1 s.
	vars["ProbeTimeout"] = 5
	k := &kubelet{t: t, dir: nv.kube, manifests: filepath.Join(nv.kube, "manifests"), podsDir: "/var/lib/kubelet/pods",
		vars: vars, get: nv.get, node: nv,
		// Under TCG kubelet's own work (PLEG relists, probes, pod
		// workers) is several times slower than natively.
		slow: 2,
	}
	k.logText = func() string {
		b, _ := os.ReadFile(nv.logPath)
		return string(b)
	}
	k.exited = nv.exited
	start := time.Now()
	k.waitReadOnlyPort(t, 3*time.Minute)
	t.Logf("kubelet in the node VM answering %v later", time.Since(start).Round(10*time.Millisecond))
	return k
}

func (nv *nodeVMKubelet) cli(args ...string) (string, error) { return nodeCLI(nv.d, args...) }
func (nv *nodeVMKubelet) status() nodevm.Status              { return nodeStatus(nv.d) }

// exited is an error once kubelet is no longer the one the test saw
// start: the Supervisor makes the node VM again when kubelet exits, and
// the scenarios' pods would then be another kubelet's. Looked at every
// few seconds (each look runs the macvz CLI); a daemon that does not
// answer (being restarted) says nothing.
func (nv *nodeVMKubelet) exited() error {
	nv.mu.Lock()
	defer nv.mu.Unlock()
	if time.Since(nv.checked) < 5*time.Second {
		return nil
	}
	nv.checked = time.Now()
	st := nv.status()
	if st.State == "" {
		return nil
	}
	if st.State != "running" || st.ContainerID != nv.container {
		return fmt.Errorf("kubelet %.12s in the node VM is gone: node VM %s, kubelet %.12s, last error %q", nv.container, st.State, st.ContainerID, st.LastError)
	}
	return nil
}

// get reads a path of kubelet's read-only port, through the node VM's
// agent (kubelet listens on the VM's loopback; nothing forwards it).
func (nv *nodeVMKubelet) get(path string) ([]byte, error) {
	c, err := nv.agent()
	if err != nil {
		return nil, err
	}
	// kubelet under TCG takes seconds for /stats/summary (the CRI's
	// stats of every pod).
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	conn, err := agentapi.DialPort(ctx, c.Agent(), 10255)
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	// The deadline bounds the reads too.
	defer context.AfterFunc(ctx, func() { conn.Close() })()
	b, err := readOnlyGet(conn, path)
	if ctx.Err() != nil {
		return nil, fmt.Errorf("GET %s: %w", path, ctx.Err())
	}
	return b, err
}

// readOnlyGet is GET path on conn, kubelet's read-only port.
func readOnlyGet(conn io.ReadWriter, path string) ([]byte, error) {
	req, err := http.NewRequest(http.MethodGet, "http://127.0.0.1:10255"+path, nil)
	if err != nil {
		return nil, err
	}
	req.Close = true
	if err := req.Write(conn); err != nil {
		return nil, err
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), req)
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

// agent is the node VM's shim, connected to directly: the test reaches
// kubelet while the daemon restarts too.
func (nv *nodeVMKubelet) agent() (*shim.Client, error) {
	nv.mu.Lock()
	defer nv.mu.Unlock()
	if nv.shim != nil {
		select {
		case <-nv.shim.Done():
			nv.shim = nil
		default:
			return nv.shim, nil
		}
	}
	st := nv.status()
	if st.SandboxID == "" {
		return nil, fmt.Errorf("no node VM (state %q)", st.State)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := shim.Connect(ctx, filepath.Join(nv.d.state, "sandboxes", st.SandboxID))
	if err != nil {
		return nil, fmt.Errorf("the node VM's shim: %w", err)
	}
	nv.shim = c
	return c, nil
}

// beforeRestart is the node VM's state before the daemon restarts.
func (nv *nodeVMKubelet) beforeRestart(t *testing.T) nodevm.Status {
	t.Helper()
	st := nv.status()
	if st.State != "running" {
		t.Fatalf("node VM before the restart: %+v", st)
	}
	if _, err := nv.agent(); err != nil {
		t.Fatal(err)
	}
	return st
}

// assertAdopted: the daemon's restart left the node VM and kubelet
// running, and the new daemon adopted them: the same sandbox and
// container, no restart, the VM's shim never went away.
func (nv *nodeVMKubelet) assertAdopted(t *testing.T, before nodevm.Status) {
	t.Helper()
	nv.mu.Lock()
	c := nv.shim
	nv.mu.Unlock()
	select {
	case <-c.Done():
		t.Errorf("the node VM's shim went away during the daemon's restart")
	default:
	}
	var st nodevm.Status
	waitFor(t, "the new daemon adopting the node VM", time.Minute, func() bool { st = nv.status(); return st.State == "running" })
	if st.SandboxID != before.SandboxID || st.ContainerID != before.ContainerID || st.Restarts != 0 {
		t.Errorf("node VM after the daemon's restart: sandbox %.12s → %.12s, kubelet %.12s → %.12s, %d restarts (%s); want it adopted",
			before.SandboxID, st.SandboxID, before.ContainerID, st.ContainerID, st.Restarts, st.LastError)
	}
}

// withoutNodeVM drops the node VM's processes from ps (processesUnder):
// it runs until the test ends.
func (k *kubelet) withoutNodeVM(ps []string) []string {
	if k.node == nil {
		return ps
	}
	id := k.node.status().SandboxID
	if id == "" {
		return ps
	}
	return slices.DeleteFunc(ps, func(p string) bool { return strings.Contains(p, id) })
}

// cleanHost removes what the scenarios' pods left on the host through
// the node VM's shares (kubelet removes a removed pod's directories in
// its housekeeping, which the node VM's stop can cut short), its
// configuration directory, and the host paths made for it.
func (nv *nodeVMKubelet) cleanHost(t *testing.T, made map[string]bool) {
	dirs, _ := filepath.Glob("/var/log/pods/*_*-" + kubeletNode + "_*")
	for _, d := range dirs {
		if uid := d[strings.LastIndex(d, "_")+1:]; uid != "" {
			pod := filepath.Join("/var/lib/kubelet/pods", uid)
			ms := hostTmpfsUnder(pod)
			for i := len(ms) - 1; i >= 0; i-- {
				unix.Unmount(ms[i], unix.MNT_DETACH)
			}
			os.RemoveAll(pod)
		}
		os.RemoveAll(d)
	}
	links, _ := filepath.Glob("/var/log/containers/*-" + kubeletNode + "_*")
	for _, l := range links {
		os.Remove(l)
	}
	if nv.kube != "" {
		os.RemoveAll(nv.kube)
	}
	for i := len(nodeVMHostPaths) - 1; i >= 0; i-- {
		if p := nodeVMHostPaths[i]; made[p] {
			if err := os.Remove(p); err != nil && !os.IsNotExist(err) {
				t.Errorf("kubelet in the node VM left %s: %v", p, err)
			}
		}
	}
}

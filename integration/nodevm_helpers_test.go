//go:build linux

package integration

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/macvz/macvz/integration/guest"
	"github.com/macvz/macvz/integration/nettest"
	"github.com/macvz/macvz/integration/testregistry"
	"github.com/macvz/macvz/runtime/agentapi"
	"github.com/macvz/macvz/runtime/nodevm"
	"github.com/macvz/macvz/runtime/shim"
)

// kubeletReadOnlyPort is kubelet's read-only HTTP port in the node VM:
// no credentials, so tests read /stats/summary, /metrics and /pods with
// a plain GET through the node VM's agent.
const kubeletReadOnlyPort = 10255

// kubeletHostDirs are the directories kubelet hard-codes (its root dir's
// pods/ and the pod logs): they are the host's, shared into the node VM
// at the same paths.
var kubeletHostDirs = []string{"/var/lib/kubelet/pods", "/var/log/pods", "/var/log/containers"}

// standaloneNodeVM says how a test's daemon runs its node VM, with
// kubelet in it standalone (static pods only).
type standaloneNodeVM struct {
	hostname    string         // kubelet's --hostname-override; static pods' names end in -hostname
	staticPods  []string       // the static pods' names, whose directories on the host the test removes
	kubelet     map[string]any // KubeletConfiguration fields over standaloneKubeletConfig's
	maxLinuxVMs int            // vm.max_linux_vms; 0 = the daemon's default
	cpus        int            // node.cpus; 0 = the host's
	memoryBytes int64          // node.memory_bytes; 0 = the host's
}

// nodeVMTest is a daemon with [node] enabled, and the directory shared
// into its node VM with kubelet's configuration and static pods.
type nodeVMTest struct {
	v       *vmTest
	kube    string // kubelet.json and manifests/, at the same path in the VM
	stopped bool   // stopped by the test: its cleanup need not
}

// standaloneKubeletConfig is the KubeletConfiguration of a standalone
// kubelet in the node VM: cgroupfs with no QoS cgroups and nothing
// enforced, anonymous access to its read-only port, and a CRI timeout
// long enough for a pod VM's first pull under TCG.
func standaloneKubeletConfig(staticPodPath string) map[string]any {
	return map[string]any{
		"kind":                   "KubeletConfiguration",
		"apiVersion":             "kubelet.config.k8s.io/v1beta1",
		"cgroupDriver":           "cgroupfs",
		"cgroupsPerQOS":          false,
		"enforceNodeAllocatable": []string{},
		"failSwapOn":             false,
		"failCgroupV1":           false,
		"staticPodPath":          staticPodPath,
		"address":                "127.0.0.1",
		"readOnlyPort":           kubeletReadOnlyPort,
		"authentication":         map[string]any{"anonymous": map[string]any{"enabled": true}, "webhook": map[string]any{"enabled": false}},
		"authorization":          map[string]any{"mode": "AlwaysAllow"},
		"evictionHard":           map[string]string{"memory.available": "50Mi"},
		"runtimeRequestTimeout":  "4m",
	}
}

// startNodeVMTest pushes the node image to a registry of its own, writes
// kubelet's configuration and starts the daemon with [node] enabled. The
// node VM has no forwarded ports: tests reach kubelet through the agent.
// Cleanups stop the node VM (the daemon's crictl rmp -a does not see it)
// and log kubelet's log if the test failed.
func startNodeVMTest(t *testing.T, o standaloneNodeVM) *nodeVMTest {
	t.Helper()
	img, err := nodeImage()
	if err != nil {
		t.Fatalf("building the node image: %v", err)
	}
	nodeReg := testregistry.Start(t, testregistry.Options{})
	if err := nodeReg.Push(context.Background(), "macvz/node", guest.RefNode, img); err != nil {
		t.Fatal(err)
	}
	nodeRef := nodeReg.Host() + "/macvz/node:" + guest.RefNode

	kube := makeKubeletDirs(t, o.staticPods)
	cfg := standaloneKubeletConfig(filepath.Join(kube, "manifests"))
	maps.Copy(cfg, o.kubelet)
	b, err := json.Marshal(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(kube, "kubelet.json"), b, 0o644); err != nil {
		t.Fatal(err)
	}

	vmTOML := ""
	if o.maxLinuxVMs > 0 {
		vmTOML = fmt.Sprintf("max_linux_vms = %d\n", o.maxLinuxVMs)
	}
	n := &nodeVMTest{kube: kube}
	n.v = newVMTestIn(t, nil, fmt.Sprintf(`
[registry.hosts.%q]
insecure = true

[vm]
warm_start = false
%s
[node]
enabled = true
image = %q
kubelet_args = [%s]
shares = [%s]
ports = []
cpus = %d
memory_bytes = %d
`, nodeReg.Host(), vmTOML, nodeRef,
		quotedList("--config="+filepath.Join(kube, "kubelet.json"), "--hostname-override="+o.hostname, "--v=2"),
		quotedList(append([]string{kube}, kubeletHostDirs...)...), o.cpus, o.memoryBytes))
	t.Cleanup(func() {
		if t.Failed() {
			b, _ := os.ReadFile(n.status().LogPath)
			t.Logf("kubelet's log:\n%s", b)
		}
		if !n.stopped {
			n.cli("stop")
			waitFor(t, "the node VM stopped", time.Minute, func() bool { return n.status().State == "stopped" })
		}
	})
	return n
}

// makeKubeletDirs makes the directory shared into the node VM (with its
// manifests/) and the host's kubelet directories that are missing.
// kubelet removes a deleted pod's directories in its housekeeping, which
// the node VM's stop can cut short: a cleanup removes the static pods'
// (before the directories made here go: cleanups run last first).
func makeKubeletDirs(t *testing.T, staticPods []string) string {
	t.Helper()
	kube, err := os.MkdirTemp("", "mvzkube")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(kube) })
	if err := os.MkdirAll(filepath.Join(kube, "manifests"), 0o755); err != nil {
		t.Fatal(err)
	}
	for _, p := range kubeletHostDirs {
		if _, err := os.Stat(p); os.IsNotExist(err) {
			if err := os.MkdirAll(p, 0o755); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { os.Remove(p) })
		}
	}
	t.Cleanup(func() {
		for _, name := range staticPods {
			removeStaticPodDirs(name)
		}
	})
	return kube
}

// removeStaticPodDirs removes the host's directories of the static pod
// name in namespace default: its log directory, whose name ends in the
// pod's UID, its pod directory, and its containers' log links.
func removeStaticPodDirs(name string) {
	dirs, _ := filepath.Glob("/var/log/pods/default_" + name + "_*")
	for _, d := range dirs {
		if uid := d[strings.LastIndex(d, "_")+1:]; uid != "" {
			os.RemoveAll(filepath.Join("/var/lib/kubelet/pods", uid))
		}
		os.RemoveAll(d)
	}
	links, _ := filepath.Glob("/var/log/containers/" + name + "_*")
	for _, l := range links {
		os.Remove(l)
	}
}

// quotedList is ss as the items of a TOML array of strings.
func quotedList(ss ...string) string {
	var out []string
	for _, s := range ss {
		out = append(out, fmt.Sprintf("%q", s))
	}
	return strings.Join(out, ", ")
}

// nodeCLI runs `macvz node args... --config` against daemon d.
func nodeCLI(d *daemon, args ...string) (string, error) {
	out, err := exec.Command(macvzBin, append(append([]string{"node"}, args...), "--config", d.configPath())...).CombinedOutput()
	return string(out), err
}

// nodeStatus is `macvz node status --json` of daemon d; the zero Status
// if that fails (a daemon being restarted does not answer).
func nodeStatus(d *daemon) nodevm.Status {
	var st nodevm.Status
	if out, err := nodeCLI(d, "status", "--json"); err == nil {
		json.Unmarshal([]byte(out), &st)
	}
	return st
}

func (n *nodeVMTest) cli(args ...string) (string, error) { return nodeCLI(n.v.d, args...) }
func (n *nodeVMTest) status() nodevm.Status              { return nodeStatus(n.v.d) }

// waitRunning waits for the node VM to run and returns its status.
func (n *nodeVMTest) waitRunning(t *testing.T) nodevm.Status {
	t.Helper()
	waitFor(t, "the node VM running (macvz node status)", 4*time.Minute, func() bool { return n.status().State == "running" })
	return n.status()
}

// stop stops the node VM and waits until it is stopped.
func (n *nodeVMTest) stop(t *testing.T) {
	t.Helper()
	if out, err := n.cli("stop"); err != nil {
		t.Fatalf("macvz node stop: %v\n%s", err, out)
	}
	waitFor(t, "the node VM stopped", time.Minute, func() bool { return n.status().State == "stopped" })
	n.stopped = true
}

// writeManifest writes a static pod's manifest where kubelet reads them.
func (n *nodeVMTest) writeManifest(t *testing.T, file, manifest string) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(n.kube, "manifests", file), []byte(manifest), 0o644); err != nil {
		t.Fatal(err)
	}
}

// waitStaticPodRunning waits for kubelet to run the static pod name
// (through the daemon's CRI: a ready sandbox with a running container)
// and returns its sandbox's ID.
func (n *nodeVMTest) waitStaticPodRunning(t *testing.T, what, name string) string {
	t.Helper()
	var podID string
	waitFor(t, what, 5*time.Minute, func() bool {
		out, _ := n.v.d.crictl("pods", "--name", "^"+name+"$", "--state", "ready", "-q")
		podID = strings.TrimSpace(out)
		if podID == "" {
			return false
		}
		ctr, _ := n.v.d.crictl("ps", "--pod", podID, "--state", "running", "-q")
		return strings.TrimSpace(ctr) != ""
	})
	return podID
}

// kubeletPort is kubelet's read-only port in one node VM, reached
// through that VM's agent (the node VM forwards no ports).
type kubeletPort struct {
	shim *shim.Client
}

// connectKubeletPort connects to the shim of the node VM sandboxID; the
// connection is closed when the test ends.
func (n *nodeVMTest) connectKubeletPort(t *testing.T, sandboxID string) *kubeletPort {
	t.Helper()
	c, err := shim.Connect(context.Background(), filepath.Join(n.v.d.state, "sandboxes", sandboxID))
	if err != nil {
		t.Fatalf("the node VM's shim: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	return &kubeletPort{shim: c}
}

// get is the body of GET path, an error unless kubelet answers 200 OK.
// Each request has a connection of its own, dialled through the agent
// and closed after the answer: there is no http.Transport to pool them.
func (k *kubeletPort) get(path string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	conn, err := agentapi.DialPort(ctx, k.shim.Agent(), kubeletReadOnlyPort)
	if err != nil {
		return "", err
	}
	defer conn.Close()
	req, err := http.NewRequest(http.MethodGet, "http://127.0.0.1:"+strconv.Itoa(kubeletReadOnlyPort)+path, nil)
	if err != nil {
		return "", err
	}
	req.Close = true
	if err := req.Write(conn); err != nil {
		return "", err
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return "", err
	}
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("GET %s: %s: %s", path, resp.Status, b)
	}
	return string(b), nil
}

// promValue is the first sample of metric in a Prometheus text page
// whose labels contain label ("" = any).
func promValue(page, metric, label string) (float64, bool) {
	for _, l := range strings.Split(page, "\n") {
		if !strings.HasPrefix(l, metric+"{") && !strings.HasPrefix(l, metric+" ") {
			continue
		}
		if label != "" && !strings.Contains(l, label) {
			continue
		}
		// The value follows the labels, or the name of a sample without.
		f := strings.Fields(l[strings.LastIndex(l, "}")+1:])
		if len(f) == 0 {
			continue
		}
		if v, err := strconv.ParseFloat(f[len(f)-1], 64); err == nil {
			return v, true
		}
	}
	return 0, false
}

// nodeVMNet is a network namespace on the bridge-tap network where a
// daemon runs a node VM on the pod network, with the node image served
// from a registry inside the namespace.
type nodeVMNet struct {
	ns              *nettest.NetNS
	confDir, binDir string
	ipamDir         string
	// registry is the node image's registry's host:port in ns.
	registry string
}

// startNodeVMNet makes the namespace (named name), the CNI plugins and
// configuration, and pushes the node image to a registry served in it.
func startNodeVMNet(t *testing.T, name string) nodeVMNet {
	t.Helper()
	nettest.Require(t)
	img, err := nodeImage()
	if err != nil {
		t.Fatalf("building the node image: %v", err)
	}
	bin, err := netPlugins()
	if err != nil {
		t.Fatalf("building the CNI plugins: %v", err)
	}
	n := nodeVMNet{ns: nettest.NewNetNS(t, name), binDir: bin, ipamDir: t.TempDir()}
	n.confDir = bridgeTapConf(t, n.ipamDir)
	reg := testregistry.Start(t, testregistry.Options{})
	if err := reg.Push(context.Background(), "macvz/node", guest.RefNode, img); err != nil {
		t.Fatal(err)
	}
	ln, err := n.ns.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	n.registry = reg.ServeOn(ln)
	return n
}

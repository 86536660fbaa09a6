//go:build linux

package integration

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/macvz/macvz/integration/guest"
	"github.com/macvz/macvz/integration/testregistry"
	"github.com/macvz/macvz/runtime/agentapi"
	"github.com/macvz/macvz/runtime/nodevm"
	"github.com/macvz/macvz/runtime/shim"
)

// dpNode is the node's name (--hostname-override), dpMaxVMs the daemon's
// vm.max_linux_vms: the devices kubelet should get.
const (
	dpNode   = "macvz-node-dp"
	dpMaxVMs = 2
)

// dpStaticPod is a static pod of the httpd guest that asks for n Linux
// VM slots.
const dpStaticPod = `apiVersion: v1
kind: Pod
metadata:
  name: %s
  namespace: default
spec:
  hostNetwork: true
  terminationGracePeriodSeconds: 5
  containers:
  - name: httpd
    image: %s
    resources:
      limits: {macvz.io/linux-vm: %d}
`

// TestNodeVMDevicePlugin: kubelet in the node VM gets the daemon's VM
// slots as devices. The daemon's device plugin registers with kubelet's
// registration socket in the VM (dialled through the node VM's agent),
// kubelet dials the plugin's endpoint in its device-plugin directory in
// the VM (served from the host), and kubelet's pod-resources API answers
// through the agent too. With vm.max_linux_vms = 2, a static pod asking
// for one macvz.io/linux-vm is admitted and runs, and one asking for 3
// is rejected by kubelet's admission (1 device available: the slots
// but the one pod one holds); a new node VM is registered with again.
func TestNodeVMDevicePlugin(t *testing.T) {
	requireKubelet(t)
	img, err := nodeImage()
	if err != nil {
		t.Fatalf("building the node image: %v", err)
	}
	nodeReg := testregistry.Start(t, testregistry.Options{})
	if err := nodeReg.Push(context.Background(), "macvz/node", guest.RefNode, img); err != nil {
		t.Fatal(err)
	}
	nodeRef := nodeReg.Host() + "/macvz/node:" + guest.RefNode

	kube, err := os.MkdirTemp("", "mvzkube")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(kube) })
	if err := os.MkdirAll(filepath.Join(kube, "manifests"), 0o755); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{"/var/lib/kubelet/pods", "/var/log/pods", "/var/log/containers"} {
		if _, err := os.Stat(p); os.IsNotExist(err) {
			if err := os.MkdirAll(p, 0o755); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { os.Remove(p) })
		}
	}
	// The static pods' directories on the host (see TestNodeVM).
	t.Cleanup(func() {
		for _, name := range []string{"one-" + dpNode, "three-" + dpNode} {
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
	})
	cfg, err := json.Marshal(map[string]any{
		"kind":                   "KubeletConfiguration",
		"apiVersion":             "kubelet.config.k8s.io/v1beta1",
		"cgroupDriver":           "cgroupfs",
		"cgroupsPerQOS":          false,
		"enforceNodeAllocatable": []string{},
		"failSwapOn":             false,
		"failCgroupV1":           false,
		"staticPodPath":          filepath.Join(kube, "manifests"),
		"address":                "127.0.0.1",
		"readOnlyPort":           kubeletReadOnlyPort,
		"authentication":         map[string]any{"anonymous": map[string]any{"enabled": true}, "webhook": map[string]any{"enabled": false}},
		"authorization":          map[string]any{"mode": "AlwaysAllow"},
		"evictionHard":           map[string]string{"memory.available": "50Mi"},
		"runtimeRequestTimeout":  "4m",
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(kube, "kubelet.json"), cfg, 0o644); err != nil {
		t.Fatal(err)
	}
	q := func(ss ...string) string {
		var out []string
		for _, s := range ss {
			out = append(out, fmt.Sprintf("%q", s))
		}
		return strings.Join(out, ", ")
	}
	v := newVMTestIn(t, nil, fmt.Sprintf(`
[registry.hosts.%q]
insecure = true

[vm]
warm_start = false
max_linux_vms = %d

[node]
enabled = true
image = %q
kubelet_args = [%s]
shares = [%s]
ports = []
cpus = 2
memory_bytes = %d
`, nodeReg.Host(), dpMaxVMs, nodeRef,
		q("--config="+filepath.Join(kube, "kubelet.json"), "--hostname-override="+dpNode, "--v=2"),
		q(kube, "/var/lib/kubelet/pods", "/var/log/pods", "/var/log/containers"), 1<<30))
	nodeCLI := func(args ...string) (string, error) {
		out, err := exec.Command(macvzBin, append(append([]string{"node"}, args...), "--config", v.d.configPath())...).CombinedOutput()
		return string(out), err
	}
	status := func() nodevm.Status {
		var st nodevm.Status
		if out, err := nodeCLI("status", "--json"); err == nil {
			json.Unmarshal([]byte(out), &st)
		}
		return st
	}
	stopped := false
	t.Cleanup(func() {
		if t.Failed() {
			b, _ := os.ReadFile(status().LogPath)
			t.Logf("kubelet's log:\n%s", b)
		}
		if !stopped {
			nodeCLI("stop")
			waitFor(t, "the node VM stopped", time.Minute, func() bool { return status().State == "stopped" })
		}
	})

	start := time.Now()
	waitFor(t, "the node VM running (macvz node status)", 4*time.Minute, func() bool { return status().State == "running" })
	st := status()

	// kubelet's read-only port, reached through the node VM's agent.
	ctx := context.Background()
	shimc, err := shim.Connect(ctx, filepath.Join(v.d.state, "sandboxes", st.SandboxID))
	if err != nil {
		t.Fatalf("the node VM's shim: %v", err)
	}
	defer shimc.Close()
	get := func(path string) (string, error) {
		ctx, cancel := context.WithTimeout(ctx, time.Minute)
		defer cancel()
		conn, err := agentapi.DialPort(ctx, shimc.Agent(), kubeletReadOnlyPort)
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

	// The plugin registers with kubelet in the VM: kubelet counts the
	// registration, the daemon says so with the slots as devices.
	waitFor(t, "kubelet in the node VM counting the plugin's registration", 3*time.Minute, func() bool {
		page, err := get("/metrics")
		if err != nil {
			return false
		}
		n, ok := promValue(page, "kubelet_device_plugin_registration_total", `resource_name="macvz.io/linux-vm"`)
		return ok && n >= 1
	})
	t.Logf("plugin registered with the node VM's kubelet %v after the daemon's start", time.Since(start).Round(10*time.Millisecond))
	// The daemon's lines of the node VM's plugin (the one for a kubelet
	// on the host runs too, and finds none).
	pluginLog := func(what string) []string {
		var out []string
		for _, l := range strings.Split(v.d.log.String(), "\n") {
			if strings.Contains(l, "component=node-vm-device-plugin") && strings.Contains(l, what) {
				out = append(out, l)
			}
		}
		return out
	}
	waitFor(t, "the daemon saying it registered the slots with the node VM's kubelet", time.Minute, func() bool {
		for _, l := range pluginLog("device plugin registered with kubelet") {
			if strings.Contains(l, fmt.Sprintf("devices=%d", dpMaxVMs)) {
				return true
			}
		}
		return false
	})

	// A pod asking for one slot is admitted and runs.
	if err := os.WriteFile(filepath.Join(kube, "manifests", "one.yaml"), []byte(fmt.Sprintf(dpStaticPod, "one", v.httpd, 1)), 0o644); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "kubelet in the node VM running the static pod asking for one Linux VM", 5*time.Minute, func() bool {
		out, _ := v.d.crictl("pods", "--name", "^one-"+dpNode+"$", "--state", "ready", "-q")
		podID := strings.TrimSpace(out)
		if podID == "" {
			return false
		}
		ctr, _ := v.d.crictl("ps", "--pod", podID, "--state", "running", "-q")
		return strings.TrimSpace(ctr) != ""
	})

	// One asking for more than the node's slots is rejected by kubelet's
	// admission, which names what the devices are.
	if err := os.WriteFile(filepath.Join(kube, "manifests", "three.yaml"), []byte(fmt.Sprintf(dpStaticPod, "three", v.httpd, dpMaxVMs+1)), 0o644); err != nil {
		t.Fatal(err)
	}
	type podList struct {
		Items []struct {
			Metadata struct{ Name string } `json:"metadata"`
			Status   struct {
				Phase, Reason, Message string
			} `json:"status"`
		} `json:"items"`
	}
	var phase, reason, message string
	waitFor(t, "kubelet rejecting the static pod asking for 3 Linux VMs", 2*time.Minute, func() bool {
		page, err := get("/pods")
		if err != nil {
			return false
		}
		var pods podList
		if json.Unmarshal([]byte(page), &pods) != nil {
			return false
		}
		for _, p := range pods.Items {
			if p.Metadata.Name == "three-"+dpNode {
				phase, reason, message = p.Status.Phase, p.Status.Reason, p.Status.Message
				return phase == "Failed"
			}
		}
		return false
	})
	t.Logf("the pod asking for %d: %s, %s: %s", dpMaxVMs+1, phase, reason, message)
	if reason != "OutOfmacvz.io/linux-vm" && reason != "UnexpectedAdmissionError" {
		t.Errorf("rejected with reason %q, want OutOfmacvz.io/linux-vm (or the device manager's UnexpectedAdmissionError)", reason)
	}
	// Either check names what the devices are: the predicate the
	// node's allocatable (the slots), the device manager the healthy
	// devices not allocated (the slots but the one pod one holds).
	if reason == "OutOfmacvz.io/linux-vm" && !strings.Contains(message, fmt.Sprintf("capacity: %d", dpMaxVMs)) {
		t.Errorf("rejection %q: want the node's allocatable macvz.io/linux-vm of %d", message, dpMaxVMs)
	}
	if reason == "UnexpectedAdmissionError" && !strings.Contains(message, fmt.Sprintf("Requested: %d, Available: %d", dpMaxVMs+1, dpMaxVMs-1)) {
		t.Errorf("rejection %q: want %d devices available (%d slots, one allocated)", message, dpMaxVMs-1, dpMaxVMs)
	}
	if out, _ := v.d.crictl("pods", "--name", "^three-"+dpNode+"$", "-q"); strings.TrimSpace(out) != "" {
		t.Errorf("the rejected pod reached the runtime: %s", out)
	}
	// The running pod's slot is one kubelet allocated (its pod-resources
	// API answers through the agent): no device turned unhealthy.
	if bad := append(pluginLog("pod-resources API does not answer"), pluginLog("held_outside_kubelet")...); len(bad) > 0 {
		t.Errorf("the daemon did not learn kubelet's allocations:\n%s", strings.Join(bad, "\n"))
	}

	// A new node VM (its kubelet a new one, which clears its
	// device-plugin directory) is registered with again.
	registered := len(pluginLog("device plugin registered with kubelet"))
	if out, err := nodeCLI("restart"); err != nil {
		t.Fatalf("macvz node restart: %v\n%s", err, out)
	}
	waitFor(t, "a new node VM running", 4*time.Minute, func() bool {
		s := status()
		return s.State == "running" && s.SandboxID != st.SandboxID
	})
	waitFor(t, "the plugin registered with the new node VM's kubelet", 3*time.Minute, func() bool {
		return len(pluginLog("device plugin registered with kubelet")) > registered
	})

	// The pod's VM goes with the daemon's cleanup (crictl rmp -a).
	if out, err := nodeCLI("stop"); err != nil {
		t.Fatalf("macvz node stop: %v\n%s", err, out)
	}
	waitFor(t, "the node VM stopped", time.Minute, func() bool { return status().State == "stopped" })
	stopped = true
}

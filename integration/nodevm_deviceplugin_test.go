//go:build linux

package integration

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"
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
	n := startNodeVMTest(t, standaloneNodeVM{
		hostname:    dpNode,
		staticPods:  []string{"one-" + dpNode, "three-" + dpNode},
		maxLinuxVMs: dpMaxVMs,
		cpus:        2,
		memoryBytes: 1 << 30,
	})
	v := n.v

	start := time.Now()
	st := n.waitRunning(t)
	kubeletRO := n.connectKubeletPort(t, st.SandboxID)

	// The plugin registers with kubelet in the VM: kubelet counts the
	// registration, the daemon says so with the slots as devices.
	waitFor(t, "kubelet in the node VM counting the plugin's registration", 3*time.Minute, func() bool {
		page, err := kubeletRO.get("/metrics")
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
	n.writeManifest(t, "one.yaml", fmt.Sprintf(dpStaticPod, "one", v.httpd, 1))
	n.waitStaticPodRunning(t, "kubelet in the node VM running the static pod asking for one Linux VM", "one-"+dpNode)

	// One asking for more than the node's slots is rejected by kubelet's
	// admission, which names what the devices are.
	n.writeManifest(t, "three.yaml", fmt.Sprintf(dpStaticPod, "three", v.httpd, dpMaxVMs+1))
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
		page, err := kubeletRO.get("/pods")
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
	if out, err := n.cli("restart"); err != nil {
		t.Fatalf("macvz node restart: %v\n%s", err, out)
	}
	waitFor(t, "a new node VM running", 4*time.Minute, func() bool {
		s := n.status()
		return s.State == "running" && s.SandboxID != st.SandboxID
	})
	waitFor(t, "the plugin registered with the new node VM's kubelet", 3*time.Minute, func() bool {
		return len(pluginLog("device plugin registered with kubelet")) > registered
	})

	// The pod's VM goes with the daemon's cleanup (crictl rmp -a).
	n.stop(t)
}

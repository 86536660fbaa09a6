//go:build linux

package integration

import (
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"
)

func init() {
	registerClusterScenario(65, "resize", (*clusterTest).testResize)
}

// resizeManifest is a pod whose VM boots with 1 vCPU (its CPU limit)
// and 512 MiB (its memory limit).
const resizeManifest = `apiVersion: v1
kind: Pod
metadata:
  name: %[1]s
  namespace: default
  labels:
    e2e: %[1]s
spec:
  terminationGracePeriodSeconds: 5
  nodeSelector:
    kubernetes.io/hostname: %[2]s
  tolerations:
  - key: macvz.io/node-vm
    operator: Exists
    effect: NoSchedule
  containers:
  - name: app
    image: %[3]s
    command: ["sleep", "3600"]
    resources:
      requests: {cpu: 100m, memory: 128Mi}
      limits: {cpu: "1", memory: 512Mi}
`

// resizePod is the part of the resize pod the scenario reads.
type resizePod struct {
	Status struct {
		Conditions        []clusterCondition `json:"conditions"`
		ContainerStatuses []struct {
			Resources struct {
				Limits map[string]string `json:"limits"`
			} `json:"resources"`
			RestartCount int `json:"restartCount"`
		} `json:"containerStatuses"`
	} `json:"status"`
}

// testResize is kubelet's in-place pod resize on node-a (a native
// kubelet); the nodevm scenario does the same through the node VM's.
func (c *clusterTest) testResize(t *testing.T) { c.resizeOn(t, "node-a", "resize") }

// resizeOn is kubelet's in-place pod resize (kubectl patch
// --subresource resize) of a pod that is a VM on node, with pod cgroups
// (kubelet v1.37.2 needs them to resize at all). Half the CPU and half
// the memory are done in place: the guest gives memory back through the
// balloon, the container's cgroup in the guest gets the new quota,
// kubelet reports the new limits and no restart. Two CPUs, which a
// running 1-vCPU VM cannot have, leave kubelet's resize status in error
// with macvz's reason.
func (c *clusterTest) resizeOn(t *testing.T, node, name string) {
	sel := "e2e=" + name
	t.Cleanup(func() { c.cfgDelete(t, sel, "pod/"+name) })
	c.cp.Apply(t, fmt.Sprintf(resizeManifest, name, node, c.plainImage()))
	c.cfgWait(t, sel, "pod "+name+" Ready", 5*time.Minute, func() (bool, string) {
		p, ok := c.cfgGetPod(t, name)
		return ok && condition(p.Status.Conditions, "Ready").Status == "True", p.summary()
	})
	guest := func(script string) string {
		out, err := c.cfgExec(name, "sh", "-c", script)
		if err != nil {
			c.fatal(t, sel, "kubectl exec %s -- sh -c %q: %v\n%s", name, script, err, out)
		}
		return strings.TrimSpace(out)
	}
	memTotal := func() int64 {
		out := guest("cat /proc/meminfo")
		for _, l := range strings.Split(out, "\n") {
			if f := strings.Fields(l); len(f) >= 2 && f[0] == "MemTotal:" {
				kb, _ := strconv.ParseInt(f[1], 10, 64)
				return kb >> 10
			}
		}
		c.fatal(t, sel, "no MemTotal in the guest's /proc/meminfo:\n%s", out)
		return 0
	}
	// The exec runs in the container's cgroup: its cpu.max is the
	// container's limit.
	cpuMax := func() string { return guest("cat /sys/fs/cgroup$(cut -d: -f3 /proc/self/cgroup)/cpu.max") }
	get := func() resizePod {
		var p resizePod
		out := c.cp.MustKubectl(t, "get", "pod", name, "-o", "json")
		if err := json.Unmarshal([]byte(out), &p); err != nil {
			t.Fatalf("kubectl get pod %s: %v\n%s", name, err, out)
		}
		return p
	}
	patch := func(cpu, mem string) {
		body := fmt.Sprintf(`{"spec":{"containers":[{"name":"app","resources":{"requests":{"cpu":"100m","memory":"128Mi"},"limits":{"cpu":%q,"memory":%q}}}]}}`, cpu, mem)
		if out, err := c.cp.Kubectl("patch", "pod", name, "--subresource", "resize", "--type", "strategic", "-p", body); err != nil {
			c.fatal(t, sel, "kubectl patch pod %s --subresource resize: %v\n%s", name, err, out)
		}
	}
	booted, bootCPU := memTotal(), cpuMax()
	if bootCPU != "100000 100000" {
		t.Errorf("the container's cgroup cpu.max at its start: %q; want its 1-CPU limit", bootCPU)
	}

	// Down: done in place, the guest gives memory back, the container's
	// quota halves.
	start := time.Now()
	patch("500m", "256Mi")
	var mib int64
	var quota string
	c.cfgWait(t, sel, "the resize to 500m / 256Mi actuated", 3*time.Minute, func() (bool, string) {
		p := get()
		if len(p.Status.ContainerStatuses) != 1 {
			return false, "no container status"
		}
		lim := p.Status.ContainerStatuses[0].Resources.Limits
		prog := condition(p.Status.Conditions, "PodResizeInProgress")
		pend := condition(p.Status.Conditions, "PodResizePending")
		mib, quota = memTotal(), cpuMax()
		return lim["memory"] == "256Mi" && lim["cpu"] == "500m" && prog.Status != "True" && pend.Status != "True" && mib <= 260 && quota == "50000 100000",
			fmt.Sprintf("limits %v, PodResizeInProgress %s (%s: %s), PodResizePending %s (%s), guest MemTotal %d MiB, cpu.max %q", lim, prog.Status, prog.Reason, prog.Message, pend.Status, pend.Message, mib, quota)
	})
	if rc := get().Status.ContainerStatuses[0].RestartCount; rc != 0 {
		t.Errorf("the container restarted %d times for an in-place resize", rc)
	}
	t.Logf("%s: limits 1 CPU / 512Mi → 500m / 256Mi in place in %v: guest MemTotal %d → %d MiB, container cpu.max %q → %q",
		node, time.Since(start).Round(10*time.Millisecond), booted, mib, bootCPU, quota)

	// More CPUs than the VM has: kubelet's resize status carries
	// macvz's reason, and the guest keeps what it had.
	patch("2", "256Mi")
	c.cfgWait(t, sel, "kubelet's resize status to report the refused vCPU change", 3*time.Minute, func() (bool, string) {
		prog := condition(get().Status.Conditions, "PodResizeInProgress")
		return prog.Status == "True" && prog.Reason == "Error" && strings.Contains(prog.Message, "cannot add vCPUs"),
			fmt.Sprintf("PodResizeInProgress %s (%s: %s)", prog.Status, prog.Reason, prog.Message)
	})
	if q := cpuMax(); q != "50000 100000" {
		t.Errorf("the container's cpu.max after a refused resize: %q", q)
	}
	if lim := get().Status.ContainerStatuses[0].Resources.Limits; lim["cpu"] != "500m" {
		t.Errorf("kubelet reports CPU limit %q after a refused resize; want the 500m the container runs with", lim["cpu"])
	}
	t.Logf("%s: CPU limit 500m → 2: PodResizeInProgress Error: %s", node, condition(get().Status.Conditions, "PodResizeInProgress").Message)
}

//go:build linux

package integration

import (
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/macvz/macvz/integration/cluster"
)

func init() {
	registerClusterScenario(70, "drain", (*clusterTest).testDrain)
	registerClusterScenario(80, "restart", (*clusterTest).testRestart)
}

// sandboxIDs is every sandbox macvz has on the node (any state), or the
// named pod's when pod is set.
func sandboxIDs(t testing.TB, n *cluster.Node, pod string) []string {
	t.Helper()
	args := []string{"pods", "-q"}
	if pod != "" {
		args = append(args, "--name", "^"+pod+"$")
	}
	out, err := n.Crictl(args...)
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	ids := strings.Fields(out)
	slices.Sort(ids)
	return ids
}

func snapshotDirs(t testing.TB, n *cluster.Node) int {
	t.Helper()
	d, err := n.SnapshotDirs()
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// idleSnapshots waits until the node runs nothing but the web pod's
// sandbox and returns its snapshot directories without that sandbox's
// disk clone: what the node keeps with no pod (image bases, warm
// states).
func (c *clusterTest) idleSnapshots(t testing.TB, n *cluster.Node) int {
	t.Helper()
	var ids []string
	c.waitUntil(t, "app=web", "node "+n.Name+" holding only the web pod's sandbox (the earlier scenarios' pods removed)", 3*time.Minute,
		func() (bool, string) {
			ids = sandboxIDs(t, n, "")
			return len(ids) == 1, fmt.Sprintf("sandboxes %v", ids)
		})
	// The sandbox's disk clone, when its VM has a disk (the test guest
	// boots from kernel and initrd and has none).
	var st struct {
		Info struct {
			Disk string `json:"disk"`
		} `json:"info"`
	}
	out, err := n.Crictl("inspectp", "-o", "json", ids[0])
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		t.Fatal(err)
	}
	dirs := snapshotDirs(t, n)
	if st.Info.Disk != "" {
		dirs--
	}
	return dirs
}

// waitClean waits until nothing of any pod is left on the node (see
// cluster.Node.Leftovers) and its snapshotter is back at idle
// directories. kubelet removes a deleted pod's sandbox in its garbage
// collection, which runs every minute.
func (c *clusterTest) waitClean(t testing.TB, n *cluster.Node, idle int, after string) {
	t.Helper()
	start := time.Now()
	c.waitUntil(t, "", fmt.Sprintf("nothing left on %s %s", n.Name, after), 3*time.Minute, func() (bool, string) {
		left := n.Leftovers()
		if d := snapshotDirs(t, n); d != idle {
			left = append(left, fmt.Sprintf("%d snapshot directories, want %d (a disk clone is left)", d, idle))
		}
		return len(left) == 0, strings.Join(left, "\n")
	})
	t.Logf("%s %s: no sandbox, container, shim, VM, state directory, mount, tap, IPAM reservation, nftables rule or disk clone left (%v)",
		n.Name, after, time.Since(start).Round(10*time.Millisecond))
}

// waitNoPods waits until no pod matches selector (after what).
func (c *clusterTest) waitNoPods(t testing.TB, selector, what string) {
	t.Helper()
	c.waitUntil(t, selector, what+": no "+selector+" pod left", 3*time.Minute, func() (bool, string) {
		ps := c.getPods(t, selector)
		return len(ps) == 0, fmt.Sprintf("%d pods", len(ps))
	})
}

// testDrain: kubectl scale --replicas=0, kubectl delete and kubectl
// drain each leave nothing on the node a pod left; drained node-b's pod
// is recreated on node-a. web ends as it began: 2 replicas, one a node.
func (c *clusterTest) testDrain(t *testing.T) {
	c.waitWeb(t, 2, 3*time.Minute)
	idle := map[string]int{}
	for _, n := range c.nodes {
		idle[n.Name] = c.idleSnapshots(t, n)
	}
	restored := false
	t.Cleanup(func() {
		if !restored {
			c.cp.Kubectl("uncordon", "node-b")
			c.cp.Apply(t, fmt.Sprintf(webManifest, 2, c.httpd))
		}
	})

	// Each of these ends every web pod; both nodes must then be clean,
	// and web is brought back at 2 replicas for the next.
	for _, args := range [][]string{
		{"scale", "deployment", "web", "--replicas=0"},
		{"delete", "deployment", "web", "--wait=true"},
	} {
		step := time.Now()
		what := "kubectl " + strings.Join(args, " ")
		c.cp.MustKubectl(t, args...)
		c.waitNoPods(t, "app=web", what)
		for _, n := range c.nodes {
			c.waitClean(t, n, idle[n.Name], "after "+what)
		}
		t.Logf("%s → both nodes clean in %v", what, time.Since(step).Round(10*time.Millisecond))
		if args[0] == "delete" {
			c.cp.Apply(t, fmt.Sprintf(webManifest, 2, c.httpd))
		}
		c.scaleWeb(t, 2)
	}
	byNode := c.waitWeb(t, 2, 3*time.Minute)

	// Drain node-b: its web pod is evicted and recreated on node-a.
	nodeB := c.node("node-b")
	evicted := byNode["node-b"][0].Metadata.Name
	step := time.Now()
	out, err := c.cp.Kubectl("drain", "node-b", "--ignore-daemonsets", "--delete-emptydir-data", "--timeout=5m")
	if err != nil {
		c.fatal(t, "app=web", "kubectl drain node-b: %v\n%s", err, out)
	}
	t.Logf("kubectl drain node-b:\n%s", strings.TrimSpace(out))
	var nb clusterNodeSpec
	if err := json.Unmarshal([]byte(c.cp.MustKubectl(t, "get", "node", "node-b", "-o", "json")), &nb); err != nil {
		t.Fatal(err)
	}
	if !nb.Spec.Unschedulable {
		t.Errorf("node-b is not unschedulable after kubectl drain")
	}
	byNode = c.waitWeb(t, 2, 6*time.Minute)
	if len(byNode["node-a"]) != 2 {
		c.fatal(t, "app=web", "after draining node-b, web's pods are on %v, want both on node-a", fmtPodsByNode(byNode))
	}
	for _, p := range byNode["node-a"] {
		if p.Metadata.Name == evicted {
			c.fatal(t, "app=web", "pod %s of drained node-b is on node-a", evicted)
		}
	}
	c.waitClean(t, nodeB, idle["node-b"], "after kubectl drain node-b")
	t.Logf("kubectl drain node-b → pod %s evicted, its replacement Ready on node-a, node-b clean, in %v", evicted, time.Since(step).Round(10*time.Millisecond))

	c.cp.MustKubectl(t, "uncordon", "node-b")
	restored = true
	c.scaleWeb(t, 2)
}

// clusterNodeSpec is the part of a v1.Node's spec the drain reads.
type clusterNodeSpec struct {
	Spec struct {
		Unschedulable bool `json:"unschedulable"`
	} `json:"spec"`
}

func fmtPodsByNode(byNode map[string][]clusterPod) string {
	var out []string
	for n, ps := range byNode {
		for _, p := range ps {
			out = append(out, p.Metadata.Name+" on "+n)
		}
	}
	slices.Sort(out)
	return strings.Join(out, ", ")
}

// podRuntime is what a restart must not change of a running pod: its
// sandbox on the node, its container, its restart count.
type podRuntime struct {
	sandboxes []string
	container string
	restarts  int
	ready     bool
	phase     string
}

func (c *clusterTest) podRuntime(t testing.TB, n *cluster.Node, pod string) podRuntime {
	t.Helper()
	var p struct {
		Status struct {
			Phase             string             `json:"phase"`
			Conditions        []clusterCondition `json:"conditions"`
			ContainerStatuses []struct {
				ContainerID  string `json:"containerID"`
				RestartCount int    `json:"restartCount"`
			} `json:"containerStatuses"`
		} `json:"status"`
	}
	if err := json.Unmarshal([]byte(c.cp.MustKubectl(t, "get", "pod", pod, "-o", "json")), &p); err != nil {
		t.Fatal(err)
	}
	r := podRuntime{sandboxes: sandboxIDs(t, n, pod), phase: p.Status.Phase,
		ready: condition(p.Status.Conditions, "Ready").Status == "True"}
	for _, cs := range p.Status.ContainerStatuses {
		r.container += cs.ContainerID
		r.restarts += cs.RestartCount
	}
	return r
}

func (r podRuntime) String() string {
	return fmt.Sprintf("phase %s, ready %v, sandboxes %v, container %q, restarts %d", r.phase, r.ready, r.sandboxes, r.container, r.restarts)
}

// checkSurvived: after a restart on node n, the node is Ready again and
// pod keeps running as before (same sandbox and container, no restart
// counted) for a while, and kubectl exec into it and a fetch of its page
// from the other node work.
func (c *clusterTest) checkSurvived(t testing.TB, n *cluster.Node, pod, podIP, from string, before podRuntime, what string) {
	t.Helper()
	start := time.Now()
	c.waitUntil(t, "app=web", "node "+n.Name+" Ready after "+what, 3*time.Minute, func() (bool, string) {
		r := condition(c.getNodes(t)[n.Name].Status.Conditions, "Ready")
		return r.Status == "True", fmt.Sprintf("Ready=%s (%s: %s)", r.Status, r.Reason, r.Message)
	})
	// kubelet relists the runtime every second; had it judged the pod
	// gone it would make a new sandbox within this window.
	for end := time.Now().Add(30 * time.Second); time.Now().Before(end); time.Sleep(2 * time.Second) {
		now := c.podRuntime(t, n, pod)
		if now.phase != "Running" || !slices.Equal(now.sandboxes, before.sandboxes) || now.container != before.container || now.restarts != before.restarts {
			c.fatal(t, "app=web", "pod %s on %s after %s: %v; before: %v\n%s", pod, n.Name, what, now, before, n.Describe(60, 60))
		}
	}
	out, err := c.cp.Kubectl("exec", pod, "--", "cat", "/proc/uptime")
	if err != nil {
		c.fatal(t, "app=web", "kubectl exec %s -- cat /proc/uptime after %s: %v\n%s\n%s", pod, what, err, out, n.Describe(40, 60))
	}
	page, err := c.cp.Kubectl("exec", from, "--", "wget", "-q", "-O", "-", "http://"+podIP+"/")
	if err != nil || !strings.Contains(page, "hello from the macvz guest") {
		c.fatal(t, "app=web", "pod %s fetching pod %s's page (http://%s/) after %s: %v\n%s", from, pod, podIP, what, err, page)
	}
	c.waitUntil(t, "app=web", "pod "+pod+" Ready after "+what, time.Minute, func() (bool, string) {
		r := c.podRuntime(t, n, pod)
		return r.ready, r.String()
	})
	t.Logf("%s: pod %s still runs in its VM (%v), exec works (guest uptime %s s), its page answers; checked for %v",
		what, pod, before, strings.Fields(out)[0], time.Since(start).Round(10*time.Millisecond))
}

// testRestart: macvz on node-a killed with SIGKILL and started again,
// then kubelet on node-a restarted: web's pod there keeps running in
// the same VM with no restart counted, and exec works.
func (c *clusterTest) testRestart(t *testing.T) {
	byNode := c.waitWeb(t, 2, 3*time.Minute)
	nodeA := c.node("node-a")
	pod, from := byNode["node-a"][0], byNode["node-b"][0]
	before := c.podRuntime(t, nodeA, pod.Metadata.Name)
	if len(before.sandboxes) != 1 || before.container == "" || !before.ready {
		c.fatal(t, "app=web", "pod %s on node-a before the restarts: %v, want one Ready sandbox and a container", pod.Metadata.Name, before)
	}

	nodeA.RestartMacvz(t, true)
	c.checkSurvived(t, nodeA, pod.Metadata.Name, pod.Status.PodIP, from.Metadata.Name, before, "kill -9 of macvz and its restart")

	nodeA.RestartKubelet(t, false)
	c.checkSurvived(t, nodeA, pod.Metadata.Name, pod.Status.PodIP, from.Metadata.Name, before, "kubelet's restart")
}

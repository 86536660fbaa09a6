//go:build linux

package integration

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/macvz/macvz/integration/cluster"
)

// BenchmarkNodeVM measures the node VM against a native kubelet in one
// cluster: the node-VM node's start (macvz serve, the node VM, kubelet
// in it) until the node is Ready; its QEMU's resident memory once idle;
// and, each round, one pod of the httpd guest (with a ConfigMap, a
// Secret and a token volume) applied to the native
// node-a and one to the node-VM node, in turn, timed from the apply to
// Ready (an HTTP probe every second), then deleted. Both nodes have the
// image and its warm state before anything is timed. Needs root and
// `make tools`; run with `make bench` or
//
//	go test -run '^$' -bench NodeVM -benchtime 3x -timeout 60m ./integration/
func BenchmarkNodeVM(b *testing.B) {
	c := startCluster(b, 0)
	o := c.nodeVMNodeOptions(b)
	start := time.Now()
	n := c.cp.AddNode(b, o)
	c.waitUntil(b, "", "node "+nodeVMNode+" Ready", 5*time.Minute, func() (bool, string) {
		kn, ok := c.getNodes(b)[nodeVMNode]
		if !ok {
			return false, "not registered; node VM " + n.NodeVMState()
		}
		r := condition(kn.Status.Conditions, "Ready")
		return r.Status == "True", r.Reason + ": " + r.Message
	})
	toReady := time.Since(start)
	// Idle: nothing scheduled to it yet; kubelet's start-up work done.
	time.Sleep(20 * time.Second)
	rss := nodeVMResidentBytes(b, n)

	timePod := func(node string) time.Duration {
		b.Helper()
		name := "bench-" + node
		s := time.Now()
		c.cp.Apply(b, fmt.Sprintf(strings.Replace(nodeVMPodManifest, "periodSeconds: 2", "periodSeconds: 1", 1), name, node, c.httpd))
		c.waitUntil(b, "", "pod "+name+" Ready", 5*time.Minute, func() (bool, string) {
			out, err := c.cp.Kubectl("get", "pod", name, "-o", "json")
			if err != nil {
				return false, err.Error()
			}
			var p clusterPod
			if err := json.Unmarshal([]byte(out), &p); err != nil {
				return false, err.Error()
			}
			r := condition(p.Status.Conditions, "Ready")
			return r.Status == "True", fmt.Sprintf("phase %s, Ready=%s (%s)", p.Status.Phase, r.Status, r.Message)
		})
		d := time.Since(s)
		c.cp.MustKubectl(b, "delete", "pod", name, "--wait=true", "--timeout=3m")
		return d
	}
	// The pod's ConfigMap and Secret (its volumes, with the token's: what
	// a pod usually has).
	c.cp.Apply(b, nodeVMConfigManifest)
	// Pull and warm state on both, untimed.
	timePod("node-a")
	timePod(nodeVMNode)
	var native, inVM []time.Duration
	b.ResetTimer()
	for i := range b.N {
		if i%2 == 0 {
			native = append(native, timePod("node-a"))
			inVM = append(inVM, timePod(nodeVMNode))
		} else {
			inVM = append(inVM, timePod(nodeVMNode))
			native = append(native, timePod("node-a"))
		}
	}
	b.StopTimer()
	nat, vm := p50(native), p50(inVM)
	b.ReportMetric(toReady.Seconds(), "nodevm-to-ready-s")
	b.ReportMetric(float64(rss)/(1<<20), "nodevm-idle-rss-MiB")
	b.ReportMetric(nat.Seconds(), "native-pod-s")
	b.ReportMetric(vm.Seconds(), "nodevm-pod-s")
	b.ReportMetric(float64(vm)/float64(nat), "ratio")
	b.Logf("node-VM node Ready %v after its start; its QEMU idle: %d MiB resident; pod apply → Ready: native kubelet %v, kubelet in the node VM %v",
		toReady.Round(10*time.Millisecond), rss>>20, native, inVM)
}

// nodeVMResidentBytes is the resident memory of the node VM's QEMU on
// node n.
func nodeVMResidentBytes(t testing.TB, n *cluster.Node) int64 {
	t.Helper()
	out, err := n.MacvzCLI("node", "status", "--json")
	if err != nil {
		t.Fatal(err)
	}
	var st struct {
		SandboxID string `json:"sandboxID"`
	}
	if err := json.Unmarshal([]byte(out), &st); err != nil || st.SandboxID == "" {
		t.Fatalf("macvz node status: %v\n%s", err, out)
	}
	pid, err := os.ReadFile(filepath.Join(n.Dir, "state", "sandboxes", st.SandboxID, "qemu.pid"))
	if err != nil {
		t.Fatal(err)
	}
	status, err := os.ReadFile(filepath.Join("/proc", strings.TrimSpace(string(pid)), "status"))
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(status), "\n") {
		if f := strings.Fields(l); len(f) == 3 && f[0] == "VmRSS:" && f[2] == "kB" {
			kb, err := strconv.ParseInt(f[1], 10, 64)
			if err != nil {
				t.Fatal(err)
			}
			return kb << 10
		}
	}
	t.Fatalf("no VmRSS for the node VM's QEMU (pid %s)", strings.TrimSpace(string(pid)))
	return 0
}

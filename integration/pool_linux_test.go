//go:build linux

package integration

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// waitPool waits until want pooled VMs are ready.
func (n *netTest) waitPool(t *testing.T, want int) {
	t.Helper()
	waitFor(t, "the warm pool to fill", 3*time.Minute, func() bool { return poolReady(t, n.d) >= want })
}

// qemuCount is how many QEMU processes of the daemon (their command
// line names its directory) run.
func qemuCount(t *testing.T, d *daemon) int {
	t.Helper()
	procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	c := 0
	for _, p := range procs {
		b, err := os.ReadFile(p)
		if err == nil && bytes.Contains(b, []byte("qemu-system")) && bytes.Contains(b, []byte(d.dir)) {
			c++
		}
	}
	return c
}

// TestPodWarmPool: with vm.warm_pool a pod of an image whose state is
// saved starts in a VM restored ahead of it: the pod gets its own
// hostname, address and MAC, its network works through the tap the pool
// made (the ADD adopted it), its containers and execs run. The pool
// refills; a daemon killed with pooled VMs leaves none behind once it
// starts again, and nothing of the network is left after the pods go.
func TestPodWarmPool(t *testing.T) {
	n := newNetTestConf(t, "\n[vm]\nwarm_pool = 1\n")
	count := func(s string) int { return strings.Count(n.d.log.String(), s) }
	start := func(name string) (string, string) { t.Helper(); return n.startHTTPD(t, name) }
	_, ca := start("pool-a")
	if count("saved the VM state for warm starts") != 1 {
		t.Fatalf("the first pod did not save its state; log:\n%s", n.d.log.String())
	}
	n.waitPool(t, 1)
	pb, cb := start("pool-b")
	if got := count("VM taken from the warm pool"); got != 1 {
		t.Fatalf("%d pods took a pooled VM, want 1; log:\n%s", got, n.d.log.String())
	}
	if !strings.Contains(n.d.mustCrictl("inspectp", pb), pb) {
		t.Errorf("crictl inspectp does not know the pod that took a pooled VM")
	}
	if h := n.execOut(t, cb, "hostname"); h != "pool-b" {
		t.Errorf("hostname in the pooled pod: %q", h)
	}
	if a, b := n.execOut(t, ca, "cat", "/sys/class/net/eth0/address"), n.execOut(t, cb, "cat", "/sys/class/net/eth0/address"); a == b {
		t.Errorf("the cold and the pooled pod share the MAC %s", a)
	}
	ipB := n.podIP(t, pb)
	if out := n.execOut(t, cb, "ip", "-4", "addr", "show", "eth0"); !strings.Contains(out, ipB+"/16") {
		t.Errorf("eth0 in the pooled pod:\n%s", out)
	}
	if out, err := n.httpGet(ipB + ":80"); err != nil || !strings.Contains(out, "hello from the macvz guest") {
		t.Errorf("the namespace to the pooled pod: %v %q", err, out)
	}
	// Its container runs with the isolation a container has.
	if out := n.execOut(t, cb, "sh", "-c", "grep CapBnd /proc/self/status"); strings.Contains(out, "000001ffffffffff") {
		t.Errorf("a pooled pod's exec has every capability: %s", out)
	}

	// Refilled after the take; a daemon killed now leaves the pooled VM
	// to its successor, which discards it.
	n.waitPool(t, 1)
	before := qemuCount(t, n.d)
	n.d.crash()
	waitFor(t, "the restarted daemon to discard the previous daemon's pooled VM", time.Minute, func() bool {
		return count("discarding a pooled VM of the previous daemon") == 1 && qemuCount(t, n.d) < before
	})
	if h := n.execOut(t, cb, "hostname"); h != "pool-b" {
		t.Errorf("the pooled pod after the daemon's restart: hostname %q", h)
	}
	n.d.mustCrictl("rmp", "-f", "-a")
	// A daemon learns what to keep ready from the boots it sees: none
	// since it started.
	if got := poolReady(t, n.d); got != 0 {
		t.Errorf("pooled VMs after a restart with no pod booted: %d", got)
	}
	n.assertNetClean(t, "after removing the pods")
	waitFor(t, "the pods' QEMU processes to end", 30*time.Second, func() bool { return qemuCount(t, n.d) == 0 })
}

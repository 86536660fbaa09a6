//go:build linux

package integration

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/macvz/macvz/integration/nettest"
)

// The pod-network tests run the daemon, the plugins and QEMU inside a
// network namespace the test makes: the bridge, taps and nftables rules
// exist only there, and no traffic leaves it and loopback.

// netPlugins builds macvz-net and host-local (nettest.Packages) once.
var netPlugins = sync.OnceValues(func() (string, error) {
	dir, err := os.MkdirTemp(testTmp, "macvz-cni-bin-")
	if err != nil {
		return "", err
	}
	return dir, nettest.Build(dir)
})

// netTest is a vmTest whose daemon runs in its own namespace with the
// default bridge-tap network (10.88.0.0/16 on macvz0).
type netTest struct {
	*vmTest
	ns      *nettest.NetNS
	ipamDir string
}

func newNetTest(t *testing.T) *netTest {
	t.Helper()
	return newNetTestConf(t, "")
}

// newNetTestConf is newNetTest with extra daemon configuration.
func newNetTestConf(t testing.TB, extraTOML string) *netTest {
	t.Helper()
	nettest.Require(t)
	bin, err := netPlugins()
	if err != nil {
		t.Fatalf("building the CNI plugins: %v", err)
	}
	ns := nettest.NewNetNS(t, "pods")
	ipamDir := t.TempDir()
	confDir := bridgeTapConf(t, ipamDir)
	v := newVMTestIn(t, ns, fmt.Sprintf("\n[network]\nconf_dir = %q\nbin_dirs = [%q]\n", confDir, bin)+extraTOML)
	return &netTest{vmTest: v, ns: ns, ipamDir: ipamDir}
}

// bridgeTapConf writes the default bridge-tap network (10.88.0.0/16 on
// macvz0, host-local reservations in ipamDir) into a new directory and
// returns it.
func bridgeTapConf(t testing.TB, ipamDir string) string {
	t.Helper()
	dir := t.TempDir()
	conf := fmt.Sprintf(`{"cniVersion": "1.1.0", "name": "macvz", "plugins": [{
  "type": "macvz-net", "mode": "bridge-tap", "bridge": "macvz0",
  "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.88.0.0/16"}]], "routes": [{"dst": "0.0.0.0/0"}], "dataDir": %q},
  "capabilities": {"portMappings": true, "dns": true, "mac": true}}]}`, ipamDir)
	if err := os.WriteFile(filepath.Join(dir, "10-macvz.conflist"), []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	return dir
}

type podNet struct {
	Status struct {
		Network struct {
			IP string `json:"ip"`
		} `json:"network"`
	} `json:"status"`
}

// podIP is a pod's IP from `crictl inspectp`.
func (n *netTest) podIP(t *testing.T, pod string) string {
	t.Helper()
	var st podNet
	if err := json.Unmarshal([]byte(n.d.mustCrictl("inspectp", "-o", "json", pod)), &st); err != nil {
		t.Fatal(err)
	}
	return st.Status.Network.IP
}

// httpGet fetches http://addr/ from inside the namespace.
func (n *netTest) httpGet(addr string) (string, error) {
	c, err := n.ns.Dial("tcp", addr)
	if err != nil {
		return "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	fmt.Fprintf(c, "GET / HTTP/1.0\r\nHost: %s\r\n\r\n", addr)
	b, err := io.ReadAll(bufio.NewReader(c))
	return string(b), err
}

// reservations lists host-local's reserved addresses.
func (n *netTest) reservations(t *testing.T) []string {
	t.Helper()
	var out []string
	filepath.Walk(n.ipamDir, func(p string, fi os.FileInfo, err error) error {
		if err == nil && !fi.IsDir() && net.ParseIP(fi.Name()) != nil {
			out = append(out, fi.Name())
		}
		return nil
	})
	return out
}

// taps lists the namespace's macvz taps.
func (n *netTest) taps(t *testing.T) []string {
	t.Helper()
	var out []string
	for _, l := range strings.Split(n.ns.IP(t, "-o", "link", "show"), "\n") {
		if f := strings.Fields(l); len(f) > 1 && strings.HasPrefix(f[1], "mvz") {
			out = append(out, strings.TrimSuffix(f[1], ":"))
		}
	}
	return out
}

// podRules lists the nftables rules the plugin made for attachments
// (each carries a comment naming its attachment).
func (n *netTest) podRules(t *testing.T) []string {
	t.Helper()
	var out []string
	for _, l := range strings.Split(n.ns.Ruleset(t), "\n") {
		if strings.Contains(l, "comment") && !strings.Contains(l, `comment "macvz base"`) {
			out = append(out, strings.TrimSpace(l))
		}
	}
	return out
}

// assertNetClean: no tap, no IPAM reservation, no per-pod rule.
func (n *netTest) assertNetClean(t *testing.T, when string) {
	t.Helper()
	if taps := n.taps(t); len(taps) > 0 {
		t.Errorf("%s: taps left: %v", when, taps)
	}
	if r := n.reservations(t); len(r) > 0 {
		t.Errorf("%s: IPAM reservations left: %v", when, r)
	}
	if r := n.podRules(t); len(r) > 0 {
		t.Errorf("%s: nftables rules left:\n%s", when, strings.Join(r, "\n"))
	}
}

// TestPodNetwork: two pods on the bridge-tap network reach each other,
// the namespace reaches them, a hostPort answers, and nothing of the
// network is left after the pods are gone.
func TestPodNetwork(t *testing.T) {
	n := newNetTest(t)
	if out := n.d.mustCrictl("info"); !strings.Contains(out, `"type": "NetworkReady"`) || strings.Contains(out, "NoNetworkConfig") {
		t.Fatalf("network not ready:\n%s", out)
	} else if !strings.Contains(out, "mode bridge-tap on bridge") {
		t.Errorf("crictl info does not say which network mode pods join:\n%s", out)
	}
	dns := map[string]any{"servers": []string{"10.96.0.10"}, "searches": []string{"ns1.svc.cluster.local"}, "options": []string{"ndots:5"}}
	podA := n.podConfig(t, "web-a", map[string]any{
		"hostname": "web-a", "dns_config": dns, "linux": map[string]any{},
		"port_mappings": []map[string]any{{"host_port": 12000, "container_port": 80}},
	})
	podB := n.podConfig(t, "web-b", map[string]any{"hostname": "web-b", "linux": map[string]any{}})
	a := n.runPod(t, podA)
	b := n.runPod(t, podB)
	ipA, ipB := n.podIP(t, a), n.podIP(t, b)
	if !strings.HasPrefix(ipA, "10.88.") || !strings.HasPrefix(ipB, "10.88.") || ipA == ipB {
		t.Fatalf("pod IPs %q and %q: want two distinct addresses in 10.88.0.0/16", ipA, ipB)
	}
	ca := n.startCtr(t, a, n.ctrConfig(t, "httpd", n.httpd, nil), podA)
	n.startCtr(t, b, n.ctrConfig(t, "httpd", n.httpd, nil), podB)

	// The guest knows its address, hostname and DNS from the CRI config.
	if out := n.execOut(t, ca, "ip", "-4", "addr", "show", "eth0"); !strings.Contains(out, ipA+"/16") {
		t.Errorf("eth0 in pod A:\n%s", out)
	}
	if h := n.execOut(t, ca, "hostname"); h != "web-a" {
		t.Errorf("hostname in pod A: %q", h)
	}
	if r := n.execOut(t, ca, "cat", "/etc/resolv.conf"); !strings.Contains(r, "nameserver 10.96.0.10") || !strings.Contains(r, "search ns1.svc.cluster.local") {
		t.Errorf("resolv.conf in pod A:\n%s", r)
	}
	// Pod A reaches pod B over TCP.
	var page string
	waitFor(t, "pod A to fetch pod B's page", time.Minute, func() bool {
		out, err := n.d.crictl("exec", "-s", ca, "wget", "-q", "-O", "-", "http://"+ipB+"/")
		page = out
		return err == nil
	})
	if !strings.Contains(page, "hello from the macvz guest") {
		t.Errorf("pod B's page from pod A: %q", page)
	}
	// The namespace (the "host") reaches the pod IP, and the hostPort
	// answers on its loopback and on its own (bridge) address.
	for _, addr := range []string{ipB + ":80", "127.0.0.1:12000", "10.88.0.1:12000"} {
		var out string
		var err error
		waitFor(t, "GET "+addr, 30*time.Second, func() bool {
			out, err = n.httpGet(addr)
			return err == nil && strings.Contains(out, "hello from the macvz guest")
		})
	}
	if len(n.taps(t)) != 2 || len(n.reservations(t)) != 2 {
		t.Errorf("with two pods: taps %v, reservations %v", n.taps(t), n.reservations(t))
	}
	if rules := strings.Join(n.podRules(t), "\n"); !strings.Contains(rules, "12000") {
		t.Errorf("no DNAT rule for hostPort 12000:\n%s", rules)
	}

	n.d.mustCrictl("stopp", a, b)
	n.assertNetClean(t, "after stopp")
	n.d.mustCrictl("rmp", a, b)
	n.assertNetClean(t, "after rmp")
}

// TestPodNetworkCrash: kill -9 the daemon while RunPodSandbox boots a VM
// after the CNI ADD; the restarted daemon removes the half-made sandbox
// and its network.
func TestPodNetworkCrash(t *testing.T) {
	// The pod boots at RunPodSandbox through the annotation.
	n := newNetTestConf(t, "\n[runtime_handlers.macvz]\nallow_vm_image_annotation = true\n")
	pod := n.podConfig(t, "crash", map[string]any{
		"linux":       map[string]any{},
		"annotations": map[string]string{"macvz.io/vm-image": n.plain},
	})
	done := make(chan error, 1)
	go func() {
		_, err := n.d.crictl("runp", pod)
		done <- err
	}()
	waitFor(t, "the tap of the sandbox being created", time.Minute, func() bool { return len(n.taps(t)) == 1 })
	n.d.cmd.Process.Signal(syscall.SIGKILL)
	n.d.cmd.Wait()
	<-done
	n.d.start()
	if !strings.Contains(n.d.log.String(), "RunPodSandbox was interrupted") {
		t.Errorf("the restarted daemon did not find the half-made sandbox (killed too late?)")
	}
	n.assertNetClean(t, "after the restart")
	if out := n.d.mustCrictl("pods", "-q"); strings.TrimSpace(out) != "" {
		t.Errorf("pods after the restart: %q", out)
	}
	if ps := processesUnder(filepath.Join(n.d.dir, "state")); len(ps) > 0 {
		t.Errorf("processes left:\n%s", strings.Join(ps, "\n"))
	}
	// The name is free again: kubelet's retry succeeds.
	id := n.runPod(t, pod)
	if ip := n.podIP(t, id); !strings.HasPrefix(ip, "10.88.") {
		t.Errorf("pod IP after the retry: %q", ip)
	}
	n.d.mustCrictl("rmp", "-f", id)
	n.assertNetClean(t, "after rmp")
}

// startHTTPD runs pod name (its hostname too) with one httpd container
// and returns both IDs.
func (n *netTest) startHTTPD(t *testing.T, name string) (pod, ctr string) {
	t.Helper()
	cfg := n.podConfig(t, name, map[string]any{"hostname": name, "linux": map[string]any{}})
	pod = n.runPod(t, cfg)
	return pod, n.startCtr(t, pod, n.ctrConfig(t, "httpd", n.httpd, nil), cfg)
}

// TestPodWarmStart: the first pod of a VM boots cold and saves its state;
// the next ones restore it and still get their own MAC, address and
// hostname on the pod network; a state that cannot be restored is
// dropped, the pod boots cold and a new state is saved.
func TestPodWarmStart(t *testing.T) {
	n := newNetTest(t)
	count := func(s string) int { return strings.Count(n.d.log.String(), s) }
	start := func(name string) (string, string) { t.Helper(); return n.startHTTPD(t, name) }
	_, ca := start("warm-a")
	if count("saved the VM state for warm starts") != 1 || count("VM restored from a saved state") != 0 {
		t.Fatalf("the first pod did not boot cold and save its state; log:\n%s", n.d.log.String())
	}
	pb, cb := start("warm-b")
	pc, cc := start("warm-c")
	if got := count("VM restored from a saved state"); got != 2 {
		t.Fatalf("%d pods restored, want 2", got)
	}
	// Two guests restored from one state draw different random numbers:
	// the host reseeded each (agent Reseed) before its setup.
	draw := func(c string) string {
		return n.execOut(t, c, "sh", "-c", "head -c 32 /dev/urandom | sha256sum")
	}
	if b, c := draw(cb), draw(cc); b == c {
		t.Errorf("the restored pods drew the same random bytes (%s)", b)
	}
	macs := map[string]string{}
	for name, c := range map[string]string{"warm-a": ca, "warm-b": cb, "warm-c": cc} {
		if h := n.execOut(t, c, "hostname"); h != name {
			t.Errorf("hostname in %s: %q", name, h)
		}
		mac := n.execOut(t, c, "cat", "/sys/class/net/eth0/address")
		if other, dup := macs[mac]; dup {
			t.Errorf("%s and %s share the MAC %s", name, other, mac)
		}
		macs[mac] = name
	}
	ipC := n.podIP(t, pc)
	if out := n.execOut(t, cc, "ip", "-4", "addr", "show", "eth0"); !strings.Contains(out, ipC+"/16") {
		t.Errorf("eth0 in the restored pod C:\n%s", out)
	}
	var page string
	waitFor(t, "restored pod B to fetch restored pod C's page", time.Minute, func() bool {
		out, err := n.d.crictl("exec", "-s", cb, "wget", "-q", "-O", "-", "http://"+ipC+"/")
		page = out
		return err == nil
	})
	if !strings.Contains(page, "hello from the macvz guest") {
		t.Errorf("pod C's page from pod B: %q", page)
	}
	if out, err := n.httpGet(n.podIP(t, pb) + ":80"); err != nil || !strings.Contains(out, "hello from the macvz guest") {
		t.Errorf("the namespace to restored pod B: %v %q", err, out)
	}

	// A state the hypervisor cannot load: dropped, cold boot, saved anew.
	states, _ := filepath.Glob(filepath.Join(n.d.root(), "warm", "*", "state"))
	if len(states) != 1 {
		t.Fatalf("saved states: %v, want one", states)
	}
	if err := os.WriteFile(states[0], []byte("QEVM not a state"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, cd := start("warm-d")
	if count("restoring the saved VM state failed; booting cold") != 1 || count("saved the VM state for warm starts") != 2 {
		t.Errorf("a broken state did not fall back to a cold boot that saves again; log:\n%s", n.d.log.String())
	}
	if h := n.execOut(t, cd, "hostname"); h != "warm-d" {
		t.Errorf("hostname in the cold-booted pod D: %q", h)
	}
	n.d.mustCrictl("rmp", "-f", "-a")
	n.assertNetClean(t, "after removing the pods")
}

//go:build linux

package integration

import (
	"encoding/json"
	"fmt"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/macvz/macvz/integration/cluster"
	"github.com/macvz/macvz/integration/testutil"
)

func init() {
	registerClusterScenario(30, "service", (*clusterTest).testService)
	registerClusterScenario(35, "capacity", (*clusterTest).testCapacity)
}

// clusterMaxLinuxVMs is the nodes' vm.max_linux_vms (TestCluster's
// NodeOptions.LinuxVMs): each node shows kubelet that many
// macvz.io/linux-vm devices. It leaves room for the web Deployment at 4
// replicas (2 a node) and for the capacity scenario's pods.
const clusterMaxLinuxVMs = 4

// linuxVMResource is the extended resource of the Linux VM slots.
const linuxVMResource = "macvz.io/linux-vm"

// startKubeProxy starts kube-proxy (nftables mode) on every node, once:
// later calls find it running. It runs until the nodes stop.
func (c *clusterTest) startKubeProxy(t testing.TB) {
	t.Helper()
	bin := filepath.Join(filepath.Dir(c.cp.Opts.Bins.Kubectl), "kube-proxy")
	if fi, err := os.Stat(bin); err != nil || fi.Mode()&0o111 == 0 {
		testutil.Unavailable(t, "needs kube-proxy at %s: run `make tools` (integration/tools/build.sh builds it with the other Kubernetes binaries)", bin)
	}
	for _, n := range c.nodes {
		n.StartKubeProxy(t, bin)
	}
}

// kubeProxyState is the nodes' kube-proxy log tails and nftables table,
// for failure messages about Services.
func (c *clusterTest) kubeProxyState() string {
	var b strings.Builder
	for _, n := range c.nodes {
		b.WriteString(n.KubeProxy.Describe(60) + "\n")
		out, err := n.Exec("nft", "list", "table", "ip", "kube-proxy")
		if err != nil {
			out = err.Error()
		}
		fmt.Fprintf(&b, "---- node %s: nft list table ip kube-proxy:\n%s\n", n.Name, out)
	}
	return b.String()
}

// waitWeb waits until the Deployment web has exactly replicas pods (none
// terminating), all Ready, and returns them by node.
func (c *clusterTest) waitWeb(t testing.TB, replicas int, timeout time.Duration) map[string][]clusterPod {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		pods := c.getPods(t, "app=web")
		ready := 0
		byNode := map[string][]clusterPod{}
		for _, p := range pods {
			if condition(p.Status.Conditions, "Ready").Status == "True" {
				ready++
			}
			byNode[p.Spec.NodeName] = append(byNode[p.Spec.NodeName], p)
		}
		if ready == replicas && len(pods) == replicas {
			return byNode
		}
		if time.Now().After(deadline) {
			c.fatal(t, "app=web", "the Deployment web: %d pods, %d Ready after %v, want %d Ready", len(pods), ready, timeout, replicas)
		}
		time.Sleep(2 * time.Second)
	}
}

// scaleWeb scales the Deployment web to replicas and waits for them
// Ready, spread evenly over the nodes: a pod on a node with more than
// its share is deleted (its replacement goes where the spread wants it).
func (c *clusterTest) scaleWeb(t testing.TB, replicas int) map[string][]clusterPod {
	t.Helper()
	c.cp.MustKubectl(t, "scale", "deployment", "web", fmt.Sprintf("--replicas=%d", replicas))
	share := replicas / len(c.nodes)
	for attempt := 0; ; attempt++ {
		byNode := c.waitWeb(t, replicas, 8*time.Minute)
		var extra []string
		for _, n := range c.nodes {
			if ps := byNode[n.Name]; len(ps) > share {
				for _, p := range ps[share:] {
					extra = append(extra, p.Metadata.Name)
				}
			}
		}
		if len(extra) == 0 || replicas%len(c.nodes) != 0 {
			return byNode
		}
		if attempt == 2 {
			c.fatal(t, "app=web", "the Deployment web at %d replicas is not %d a node after deleting the extra pods twice", replicas, share)
		}
		t.Logf("scaled to %d: pods %s are over their node's share of %d; deleting them so the spread places them again", replicas, strings.Join(extra, ", "), share)
		c.cp.MustKubectl(t, append([]string{"delete", "pod", "--wait=true"}, extra...)...)
	}
}

// httpdConns reads a pod's httpd log (busybox httpd -v prefixes every
// line with the client's address and port) and returns its connections
// ("ip:port") by client IP.
var httpdClient = regexp.MustCompile(`(\d+\.\d+\.\d+\.\d+)\]?:(\d+)`)

func (c *clusterTest) httpdConns(t testing.TB, pod string) map[string]map[string]bool {
	t.Helper()
	out := c.cp.MustKubectl(t, "logs", pod)
	conns := map[string]map[string]bool{}
	for _, l := range strings.Split(out, "\n") {
		m := httpdClient.FindStringSubmatch(l)
		if m == nil {
			continue
		}
		if conns[m[1]] == nil {
			conns[m[1]] = map[string]bool{}
		}
		conns[m[1]][m[1]+":"+m[2]] = true
	}
	return conns
}

// newConns counts the connections from ip in after that before lacks.
func newConns(before, after map[string]map[string]bool, ip string) int {
	n := 0
	for k := range after[ip] {
		if !before[ip][k] {
			n++
		}
	}
	return n
}

const webService = `apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: default
spec:
  type: ClusterIP
  selector:
    app: web
  ports:
  - name: http
    protocol: TCP
    port: 80
    targetPort: 80
`

// testService: kube-proxy (nftables) on both nodes, the Deployment web
// at 4 replicas (2 a node), a ClusterIP Service over it; a pod on node A
// fetches the Service's IP until pods on both nodes answered, each
// seeing the client pod's own IP (no NAT between nodes); then the
// Service is deleted (its rules go) and web is back at 2 replicas.
func (c *clusterTest) testService(t *testing.T) {
	start := time.Now()
	c.startKubeProxy(t)
	proxyUp := time.Since(start)
	t.Logf("kube-proxy (nftables) healthy on both nodes in %v", proxyUp.Round(10*time.Millisecond))

	restored := false
	t.Cleanup(func() {
		c.cp.Kubectl("delete", "service", "web", "--ignore-not-found")
		if !restored {
			c.scaleWeb(t, 2)
		}
	})

	scaleStart := time.Now()
	byNode := c.scaleWeb(t, 4)
	t.Logf("web scaled to 4 → all Ready, 2 a node, in %v\n%s", time.Since(scaleStart).Round(10*time.Millisecond),
		c.cp.MustKubectl(t, "get", "pods", "-l", "app=web", "-o", "wide"))
	podNode := map[string]string{}
	for node, ps := range byNode {
		for _, p := range ps {
			podNode[p.Metadata.Name] = node
		}
	}

	c.cp.Apply(t, webService)
	clusterIP := strings.TrimSpace(c.cp.MustKubectl(t, "get", "service", "web", "-o", "jsonpath={.spec.clusterIP}"))
	ip, err := netip.ParseAddr(clusterIP)
	if err != nil || !netip.MustParsePrefix(serviceCIDR).Contains(ip) {
		c.fatal(t, "app=web", "Service web: clusterIP %q, want an address of %s", clusterIP, serviceCIDR)
	}

	// The EndpointSlice lists the 4 pods Ready, and each kube-proxy has
	// the Service's IP in its nftables table.
	deadline := time.Now().Add(time.Minute)
	for {
		var eps struct {
			Items []struct {
				Endpoints []struct {
					Addresses  []string `json:"addresses"`
					Conditions struct {
						Ready *bool `json:"ready"`
					} `json:"conditions"`
				} `json:"endpoints"`
			} `json:"items"`
		}
		out := c.cp.MustKubectl(t, "get", "endpointslices", "-l", "kubernetes.io/service-name=web", "-o", "json")
		if err := json.Unmarshal([]byte(out), &eps); err != nil {
			t.Fatal(err)
		}
		ready := 0
		for _, s := range eps.Items {
			for _, e := range s.Endpoints {
				if e.Conditions.Ready != nil && *e.Conditions.Ready {
					ready += len(e.Addresses)
				}
			}
		}
		programmed := 0
		for _, n := range c.nodes {
			if out, err := n.Exec("nft", "list", "table", "ip", "kube-proxy"); err == nil && strings.Contains(out, clusterIP) {
				programmed++
			}
		}
		if ready == 4 && programmed == len(c.nodes) {
			break
		}
		if time.Now().After(deadline) {
			c.fatal(t, "app=web", "Service web (%s) after 1m: %d Ready endpoints (want 4), on %d of %d nodes in kube-proxy's nftables table\n%s\n%s",
				clusterIP, ready, programmed, len(c.nodes), c.cp.MustKubectl(t, "get", "endpointslices", "-o", "wide"), c.kubeProxyState())
		}
		time.Sleep(time.Second)
	}

	// The client: a web pod on node A. Its own requests that kube-proxy
	// sends back to itself are masqueraded (hairpin); every other
	// backend must see its pod IP.
	client := byNode["node-a"][0]
	clientIP := client.Status.PodIP
	nodeA := c.node("node-a")
	var others []clusterPod
	for _, ps := range byNode {
		for _, p := range ps {
			if p.Metadata.Name != client.Metadata.Name {
				others = append(others, p)
			}
		}
	}
	slices.SortFunc(others, func(a, b clusterPod) int { return strings.Compare(a.Metadata.Name, b.Metadata.Name) })
	before := map[string]map[string]map[string]bool{}
	for _, p := range others {
		before[p.Metadata.Name] = c.httpdConns(t, p.Metadata.Name)
	}
	const burst = 24
	script := fmt.Sprintf(`ok=0; i=0; err=; while [ $i -lt %d ]; do if e=$(wget -q -O /dev/null http://%s/ 2>&1); then ok=$((ok+1)); else err=$e; fi; i=$((i+1)); done; echo ok=$ok; [ -z "$err" ] || echo "last wget error: $err"`, burst, clusterIP)
	answered := map[string]int{} // pod → connections from the client
	total, sent, refusedRuns := 0, 0, 0
	fetchStart := time.Now()
	deadline = time.Now().Add(2 * time.Minute)
	for {
		out, err := c.cp.Kubectl("exec", client.Metadata.Name, "--", "sh", "-c", script)
		if err != nil || strings.Contains(out, "ok=0\n") {
			c.fatal(t, "app=web", "pod %s on node-a fetching http://%s/ (Service web) %d times: %v\n%s\nfrom node-a's own namespace: %s\nkube-proxy:\n%s",
				client.Metadata.Name, clusterIP, burst, err, out, nodeGet(nodeA, clusterIP), c.kubeProxyState())
		}
		if !strings.Contains(out, fmt.Sprintf("ok=%d", burst)) {
			// Seen once in CI (18 of 24, "connection refused"), never
			// in runs by hand: logged with kube-proxy's state for the
			// next look; the scenario asks for answers from both nodes.
			refusedRuns++
			t.Logf("not every request answered (run %d): %s\nkube-proxy:\n%s", refusedRuns, strings.TrimSpace(out), c.kubeProxyState())
		}
		sent += burst
		onNode := map[string]int{}
		total = 0
		for _, p := range others {
			after := c.httpdConns(t, p.Metadata.Name)
			answered[p.Metadata.Name] = newConns(before[p.Metadata.Name], after, clientIP)
			onNode[podNode[p.Metadata.Name]] += answered[p.Metadata.Name]
			total += answered[p.Metadata.Name]
			// No NAT between nodes: a pod on B never sees node A's
			// LAN address for the client pod's requests.
			if podNode[p.Metadata.Name] != "node-a" {
				if nat := newConns(before[p.Metadata.Name], after, nodeA.LANAddr); nat > 0 {
					c.fatal(t, "app=web", "pod %s on %s saw %d of the Service's requests from node A's LAN address %s, not from the client pod's IP %s: pod-to-pod traffic between nodes is masqueraded (the conflist's nonMasqueradeCIDRs should keep it)\nnode-a's nftables:\n%s",
						p.Metadata.Name, podNode[p.Metadata.Name], nat, nodeA.LANAddr, clientIP, nodeA.NS.Ruleset(t))
				}
			}
		}
		if onNode["node-a"] > 0 && onNode["node-b"] > 0 {
			t.Logf("pod %s (%s) on node-a: %d requests to Service web %s in %v, all answered; the other backends saw it by its own IP: %s (the rest went back to the client itself, masqueraded)",
				client.Metadata.Name, clientIP, sent, clusterIP, time.Since(fetchStart).Round(10*time.Millisecond), fmtAnswers(answered, podNode))
			break
		}
		if time.Now().After(deadline) {
			var logs []string
			for _, p := range others {
				out, _ := c.cp.Kubectl("logs", "--tail=15", p.Metadata.Name)
				logs = append(logs, fmt.Sprintf("---- kubectl logs %s (on %s):\n%s", p.Metadata.Name, podNode[p.Metadata.Name], out))
			}
			c.fatal(t, "app=web", "after %d requests from pod %s (%s) on node-a to Service web %s, the other backends saw it by its IP: %s; want pods on both nodes\n%s\nkube-proxy:\n%s",
				sent, client.Metadata.Name, clientIP, clusterIP, fmtAnswers(answered, podNode), strings.Join(logs, "\n"), c.kubeProxyState())
		}
	}

	// And from node B: its kube-proxy serves the Service too.
	from := byNode["node-b"][0]
	if out, err := c.cp.Kubectl("exec", from.Metadata.Name, "--", "wget", "-q", "-O", "-", "http://"+clusterIP+"/"); err != nil || !strings.Contains(out, "hello from the macvz guest") {
		c.fatal(t, "app=web", "pod %s on node-b fetching http://%s/ (Service web): %v\n%s\nkube-proxy:\n%s", from.Metadata.Name, clusterIP, err, out, c.kubeProxyState())
	}
	t.Logf("pod %s on node-b fetched the Service's page", from.Metadata.Name)

	// Deleting the Service removes its rules from both nodes.
	c.cp.MustKubectl(t, "delete", "service", "web", "--wait=true")
	deadline = time.Now().Add(time.Minute)
	for {
		left := []string{}
		for _, n := range c.nodes {
			if out, err := n.Exec("nft", "list", "table", "ip", "kube-proxy"); err != nil || strings.Contains(out, clusterIP) {
				left = append(left, n.Name)
			}
		}
		if len(left) == 0 {
			break
		}
		if time.Now().After(deadline) {
			c.fatal(t, "app=web", "Service web deleted 1m ago, but kube-proxy's nftables table on %s still has %s (or is unreadable)\n%s", strings.Join(left, ", "), clusterIP, c.kubeProxyState())
		}
		time.Sleep(time.Second)
	}

	scaleStart = time.Now()
	c.scaleWeb(t, 2)
	restored = true
	t.Logf("Service deleted (rules gone on both nodes); web back at 2 replicas, one a node, in %v", time.Since(scaleStart).Round(10*time.Millisecond))
}

// nodeGet is GET http://ip/ from the node's network namespace, for
// failure messages: whether the Service answers the node itself.
func nodeGet(n *cluster.Node, ip string) string {
	conn, err := n.NS.Dial("tcp", ip+":80")
	if err != nil {
		return "connecting: " + err.Error()
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(5 * time.Second))
	fmt.Fprintf(conn, "GET / HTTP/1.0\r\nHost: %s\r\n\r\n", ip)
	b, err := io.ReadAll(conn)
	if err != nil && len(b) == 0 {
		return "reading: " + err.Error()
	}
	return fmt.Sprintf("answered %q", lastLine(string(b)))
}

func lastLine(s string) string {
	ls := strings.Split(strings.TrimSpace(s), "\n")
	return ls[len(ls)-1]
}

func fmtAnswers(answered map[string]int, podNode map[string]string) string {
	var out []string
	for p, n := range answered {
		out = append(out, fmt.Sprintf("%s on %s: %d", p, podNode[p], n))
	}
	slices.Sort(out)
	return strings.Join(out, ", ")
}

// vmSlots is a node's macvz.io/linux-vm capacity and allocatable (-1:
// the node does not have the resource).
type vmSlots struct{ capacity, allocatable int }

func (s vmSlots) String() string {
	return fmt.Sprintf("capacity %d, allocatable %d", s.capacity, s.allocatable)
}

// linuxVMSlots reads every node's macvz.io/linux-vm from `kubectl get
// nodes -o json`.
func (c *clusterTest) linuxVMSlots(t testing.TB) map[string]vmSlots {
	t.Helper()
	var list struct {
		Items []struct {
			Metadata struct {
				Name string `json:"name"`
			} `json:"metadata"`
			Status struct {
				Capacity    map[string]string `json:"capacity"`
				Allocatable map[string]string `json:"allocatable"`
			} `json:"status"`
		} `json:"items"`
	}
	if err := json.Unmarshal([]byte(c.cp.MustKubectl(t, "get", "nodes", "-o", "json")), &list); err != nil {
		t.Fatal(err)
	}
	num := func(m map[string]string) int {
		v, ok := m[linuxVMResource]
		if !ok {
			return -1
		}
		n, err := strconv.Atoi(v)
		if err != nil {
			return -1
		}
		return n
	}
	out := map[string]vmSlots{}
	for _, n := range list.Items {
		out[n.Metadata.Name] = vmSlots{num(n.Status.Capacity), num(n.Status.Allocatable)}
	}
	return out
}

// waitSlots waits until every node in want has those macvz.io/linux-vm
// figures (kubelet reports a device change with its next node status).
func (c *clusterTest) waitSlots(t testing.TB, selector, what string, want map[string]vmSlots, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		got := c.linuxVMSlots(t)
		var wrong []string
		for name, w := range want {
			if got[name] != w {
				wrong = append(wrong, fmt.Sprintf("%s: %v, want %v", name, got[name], w))
			}
		}
		if len(wrong) == 0 {
			return
		}
		if time.Now().After(deadline) {
			var pods []string
			for _, n := range c.nodes {
				out, err := n.Crictl("pods")
				if err != nil {
					out = err.Error()
				}
				pods = append(pods, fmt.Sprintf("---- crictl pods on %s:\n%s", n.Name, out))
			}
			c.fatal(t, selector, "%s: %s %s after %v:\n%s\n%s", what, linuxVMResource, strings.Join(wrong, "; "), timeout,
				strings.Join(pods, "\n"), c.node("node-a").Macvz.Describe(30))
		}
		time.Sleep(time.Second)
	}
}

// readySandboxes counts the node's Ready sandboxes (each one a VM).
func readySandboxes(t testing.TB, n *cluster.Node) int {
	t.Helper()
	out, err := n.Crictl("pods", "--state", "ready", "-q")
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	return len(strings.Fields(out))
}

// slotPod is a pod of the capacity scenario: the httpd guest on node A,
// asking for one Linux VM slot.
const slotPod = `apiVersion: v1
kind: Pod
metadata:
  name: %s
  namespace: default
  labels:
    macvz-e2e: capacity
spec:
  runtimeClassName: macvz
  terminationGracePeriodSeconds: 5
  nodeSelector:
    kubernetes.io/hostname: node-a
  containers:
  - name: httpd
    image: %s
    resources:
      limits:
        macvz.io/linux-vm: 1
`

// unaskedPod is the httpd guest on node A asking for no VM slot.
const unaskedPod = `apiVersion: v1
kind: Pod
metadata:
  name: vm-unasked
  namespace: default
  labels:
    macvz-e2e: capacity
spec:
  runtimeClassName: macvz
  terminationGracePeriodSeconds: 5
  nodeSelector:
    kubernetes.io/hostname: node-a
  containers:
  - name: httpd
    image: %s
`

// waitReady waits until the named pods (of selector) are Ready on node A.
func (c *clusterTest) waitReady(t testing.TB, selector string, names []string, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		ready := 0
		for _, p := range c.getPods(t, selector) {
			if slices.Contains(names, p.Metadata.Name) && p.Spec.NodeName == "node-a" && condition(p.Status.Conditions, "Ready").Status == "True" {
				ready++
			}
		}
		if ready == len(names) {
			return
		}
		if time.Now().After(deadline) {
			c.fatal(t, selector, "pods %s: %d Ready on node-a after %v, want all", strings.Join(names, ", "), ready, timeout)
		}
		time.Sleep(2 * time.Second)
	}
}

// testCapacity: the nodes show their vm.max_linux_vms as the extended
// resource macvz.io/linux-vm (macvz's device plugin, registered with
// each kubelet); a VM kubelet did not allocate a slot to (a pod that
// asked for none) lowers allocatable; pods asking for a slot fill node
// A, one more stays Pending (Insufficient macvz.io/linux-vm) and is
// scheduled once the first pod's slot frees.
func (c *clusterTest) testCapacity(t *testing.T) {
	const sel = "macvz-e2e=capacity"
	for _, n := range c.nodes {
		if n.LinuxVMs != clusterMaxLinuxVMs {
			c.fatal(t, "", "node %s runs with vm.max_linux_vms %d, want %d: TestCluster must startCluster(t, clusterMaxLinuxVMs)",
				n.Name, n.LinuxVMs, clusterMaxLinuxVMs)
		}
	}
	bound := clusterMaxLinuxVMs
	nodeA := c.node("node-a")
	// The pods scenario's web, one pod a node, settled (none terminating).
	c.waitWeb(t, 2, 3*time.Minute)

	// Every VM on a node now is a web pod's, which asks for no slot: each
	// is one device kubelet did not allocate.
	base := map[string]vmSlots{}
	for _, n := range c.nodes {
		base[n.Name] = vmSlots{bound, bound - readySandboxes(t, n)}
	}
	start := time.Now()
	c.waitSlots(t, "", "the nodes' VM slots with only the web pods", base, 90*time.Second)
	t.Logf("%s: %s (the web pods' VMs hold slots they did not ask for)\n%s", linuxVMResource, fmtSlots(c.linuxVMSlots(t)),
		c.cp.MustKubectl(t, "get", "nodes", "-o", "custom-columns=NAME:.metadata.name,CAPACITY:.status.capacity.macvz\\.io/linux-vm,ALLOCATABLE:.status.allocatable.macvz\\.io/linux-vm"))
	for _, n := range c.nodes {
		if !n.Macvz.Contains("device plugin registered with kubelet") {
			t.Errorf("node %s: macvz did not log registering its device plugin\n%s", n.Name, n.Macvz.Describe(40))
		}
	}

	// A pod on node A that asks for no slot: its VM holds one kubelet
	// did not allocate. (A crictl pod would too, but kubelet removes a
	// sandbox it did not make within seconds, as an orphaned pod.)
	t.Cleanup(func() {
		c.cp.Kubectl("delete", "pod", "-l", sel, "--ignore-not-found", "--wait=true", "--timeout=2m")
	})
	holdStart := time.Now()
	c.cp.Apply(t, fmt.Sprintf(unaskedPod, c.httpd))
	c.waitReady(t, sel, []string{"vm-unasked"}, 4*time.Minute)
	held := map[string]vmSlots{"node-a": {bound, base["node-a"].allocatable - 1}, "node-b": base["node-b"]}
	c.waitSlots(t, sel, "node A with the VM of a pod that asked for no slot", held, 90*time.Second)
	t.Logf("pod vm-unasked Ready on node-a in %v: %s", time.Since(holdStart).Round(10*time.Millisecond), fmtSlots(c.linuxVMSlots(t)))

	// Pods asking for a slot fill what node A has left; kubelet
	// allocated them their devices, so allocatable stays.
	free := held["node-a"].allocatable
	if free < 1 {
		c.fatal(t, "", "node-a has no slot left for a pod (%v): vm.max_linux_vms %d is too small for this scenario", held["node-a"], bound)
	}
	var fillers []string
	var manifest strings.Builder
	for i := range free {
		name := fmt.Sprintf("vm-slot-%d", i+1)
		fillers = append(fillers, name)
		fmt.Fprintf(&manifest, "---\n"+slotPod, name, c.httpd)
	}
	fillStart := time.Now()
	c.cp.Apply(t, manifest.String())
	c.waitReady(t, sel, fillers, 6*time.Minute)
	c.waitSlots(t, sel, "node A full of pods kubelet allocated slots to", held, 60*time.Second)
	if n := readySandboxes(t, nodeA); n != bound {
		t.Errorf("node-a runs %d sandboxes, want %d (its vm.max_linux_vms)", n, bound)
	}
	t.Logf("%d pods asking for a slot Ready on node-a in %v; %s", free, time.Since(fillStart).Round(10*time.Millisecond), fmtSlots(c.linuxVMSlots(t)))

	// One more: the scheduler has no slot for it on node A.
	c.cp.Apply(t, fmt.Sprintf(slotPod, "vm-slot-over", c.httpd))
	deadline := time.Now().Add(time.Minute)
	for {
		var events struct {
			Items []struct {
				Reason  string `json:"reason"`
				Message string `json:"message"`
			} `json:"items"`
		}
		out := c.cp.MustKubectl(t, "get", "events", "--field-selector", "involvedObject.kind=Pod,involvedObject.name=vm-slot-over,reason=FailedScheduling", "-o", "json")
		if err := json.Unmarshal([]byte(out), &events); err != nil {
			t.Fatal(err)
		}
		msg := ""
		for _, e := range events.Items {
			if strings.Contains(e.Message, "Insufficient "+linuxVMResource) {
				msg = e.Message
			}
		}
		if msg != "" {
			var p clusterPod
			if err := json.Unmarshal([]byte(c.cp.MustKubectl(t, "get", "pod", "vm-slot-over", "-o", "json")), &p); err != nil {
				t.Fatal(err)
			}
			if p.Status.Phase != "Pending" || p.Spec.NodeName != "" {
				c.fatal(t, sel, "pod vm-slot-over: phase %s on node %q after the scheduler said %q", p.Status.Phase, p.Spec.NodeName, msg)
			}
			t.Logf("pod vm-slot-over Pending: FailedScheduling %q", msg)
			break
		}
		if time.Now().After(deadline) {
			c.fatal(t, sel, "pod vm-slot-over (asking for a %s on node-a, which has none free) has no FailedScheduling event saying Insufficient %s after 1m",
				linuxVMResource, linuxVMResource)
		}
		time.Sleep(time.Second)
	}

	// The pod that asked for no slot goes: its slot frees, allocatable
	// rises, and the scheduler places the pending pod.
	freed := time.Now()
	c.cp.MustKubectl(t, "delete", "pod", "vm-unasked", "--wait=false")
	deadline = time.Now().Add(4 * time.Minute)
	scheduled := time.Duration(0)
	for {
		var p clusterPod
		if err := json.Unmarshal([]byte(c.cp.MustKubectl(t, "get", "pod", "vm-slot-over", "-o", "json")), &p); err != nil {
			t.Fatal(err)
		}
		if p.Spec.NodeName != "" && scheduled == 0 {
			scheduled = time.Since(freed)
			if p.Spec.NodeName != "node-a" {
				c.fatal(t, sel, "pod vm-slot-over went to %s, not node-a (its nodeSelector)", p.Spec.NodeName)
			}
		}
		if condition(p.Status.Conditions, "Ready").Status == "True" {
			break
		}
		if time.Now().After(deadline) {
			c.fatal(t, sel, "pod vm-slot-over not Ready 4m after pod vm-unasked was deleted from node-a (phase %s, node %q); %s",
				p.Status.Phase, p.Spec.NodeName, fmtSlots(c.linuxVMSlots(t)))
		}
		time.Sleep(time.Second)
	}
	c.waitSlots(t, sel, "node A after pod vm-unasked went", base, 60*time.Second)
	t.Logf("pod vm-unasked deleted → vm-slot-over scheduled to node-a in %v, Ready in %v; %s", scheduled.Round(10*time.Millisecond),
		time.Since(freed).Round(10*time.Millisecond), fmtSlots(c.linuxVMSlots(t)))

	c.cp.MustKubectl(t, "delete", "pod", "-l", sel, "--wait=true", "--timeout=3m")
	if left := c.getPods(t, sel); len(left) > 0 {
		c.fatal(t, sel, "%d of the scenario's pods left after kubectl delete --wait", len(left))
	}
	c.waitSlots(t, "", "the nodes after the scenario's pods went", base, 60*time.Second)
	t.Logf("capacity scenario %v; the nodes are back at %s", time.Since(start).Round(10*time.Millisecond), fmtSlots(c.linuxVMSlots(t)))
}

func fmtSlots(m map[string]vmSlots) string {
	var out []string
	for k, v := range m {
		out = append(out, fmt.Sprintf("%s %v", k, v))
	}
	slices.Sort(out)
	return strings.Join(out, "; ")
}

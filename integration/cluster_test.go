//go:build linux

package integration

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/macvz/macvz/integration/cluster"
	"github.com/macvz/macvz/integration/guest"
	"github.com/macvz/macvz/integration/nettest"
	"github.com/macvz/macvz/integration/testregistry"
	"github.com/macvz/macvz/integration/testutil"
)

// The cluster's addresses. The LAN is a bridge in the control plane's
// namespace; each node's namespace has a veth on it.
const (
	lanCP       = "10.99.0.1"
	serviceCIDR = "10.96.0.0/16"
	clusterCIDR = "10.244.0.0/16"
)

// clusterNode is the part of a v1.Node the test reads.
type clusterNode struct {
	Metadata struct {
		Name string `json:"name"`
	} `json:"metadata"`
	Spec struct {
		PodCIDR  string   `json:"podCIDR"`
		PodCIDRs []string `json:"podCIDRs"`
	} `json:"spec"`
	Status struct {
		Conditions []clusterCondition `json:"conditions"`
		Addresses  []struct {
			Type    string `json:"type"`
			Address string `json:"address"`
		} `json:"addresses"`
		NodeInfo struct {
			ContainerRuntimeVersion string `json:"containerRuntimeVersion"`
			KubeletVersion          string `json:"kubeletVersion"`
			OSImage                 string `json:"osImage"`
		} `json:"nodeInfo"`
	} `json:"status"`
}

type clusterCondition struct {
	Type    string `json:"type"`
	Status  string `json:"status"`
	Reason  string `json:"reason"`
	Message string `json:"message"`
}

// clusterPod is the part of a v1.Pod the test reads.
type clusterPod struct {
	Metadata struct {
		Name string `json:"name"`
		UID  string `json:"uid"`
	} `json:"metadata"`
	Spec struct {
		NodeName string `json:"nodeName"`
	} `json:"spec"`
	Status struct {
		Phase      string             `json:"phase"`
		PodIP      string             `json:"podIP"`
		Conditions []clusterCondition `json:"conditions"`
	} `json:"status"`
}

func condition(cs []clusterCondition, typ string) clusterCondition {
	for _, c := range cs {
		if c.Type == typ {
			return c
		}
	}
	return clusterCondition{Status: "Unknown", Reason: "no " + typ + " condition yet"}
}

// clusterTest is the running cluster of TestCluster.
type clusterTest struct {
	cp    *cluster.ControlPlane
	nodes []*cluster.Node
	httpd string // the httpd guest's ref, as the nodes pull it
	// podsReady is the time from applying the Deployment to all its
	// pods Ready.
	podsReady time.Duration
	// nodesReady is the time from the nodes' start to both Ready,
	// readyAt each node's.
	nodesReady time.Duration
	readyAt    map[string]time.Duration
	// reg is the test registry, served on the LAN as pullHost; nodeOpts
	// are the options every node got but its name and address, for a
	// scenario that adds a node of its own.
	reg      *testregistry.Registry
	pullHost string
	nodeOpts cluster.NodeOptions
}

// getNodes is `kubectl get nodes -o json`, by name.
func (c *clusterTest) getNodes(t testing.TB) map[string]clusterNode {
	t.Helper()
	var list struct {
		Items []clusterNode `json:"items"`
	}
	if err := json.Unmarshal([]byte(c.cp.MustKubectl(t, "get", "nodes", "-o", "json")), &list); err != nil {
		t.Fatal(err)
	}
	out := map[string]clusterNode{}
	for _, n := range list.Items {
		out[n.Metadata.Name] = n
	}
	return out
}

// getPods is `kubectl get pods -l selector -o json`.
func (c *clusterTest) getPods(t testing.TB, selector string) []clusterPod {
	t.Helper()
	var list struct {
		Items []clusterPod `json:"items"`
	}
	if err := json.Unmarshal([]byte(c.cp.MustKubectl(t, "get", "pods", "-l", selector, "-o", "json")), &list); err != nil {
		t.Fatal(err)
	}
	return list.Items
}

// fatal fails t with msg and the cluster's state (nodes, pods, the
// pods matching selector described, events, every process's log tail).
func (c *clusterTest) fatal(t testing.TB, selector, format string, args ...any) {
	t.Helper()
	// The message again after the dump: CI keeps only the output's tail.
	msg := fmt.Sprintf(format, args...)
	t.Fatalf("%s\n\ncluster state:\n%s\n\nfailed: %s", msg, c.cp.Dump(selector), msg)
}

// clusterScenario is one subtest of TestCluster: what users do with
// kubectl, run in order on the one cluster once its nodes are Ready.
// `go test -run 'TestCluster/(nodes|pods|service)$'` runs a few.
type clusterScenario struct {
	order int
	name  string
	run   func(c *clusterTest, t *testing.T)
}

// clusterScenarios are registered by the cluster_*_test.go files.
var clusterScenarios []clusterScenario

// registerClusterScenario adds a scenario; order places it (nodes 10,
// pods 20; later ones may rely on the pods scenario's Deployment).
func registerClusterScenario(order int, name string, run func(c *clusterTest, t *testing.T)) {
	clusterScenarios = append(clusterScenarios, clusterScenario{order, name, run})
}

func init() {
	registerClusterScenario(10, "nodes", (*clusterTest).testNodes)
	registerClusterScenario(20, "pods", (*clusterTest).testPods)
}

// TestCluster runs a real cluster: etcd, kube-apiserver (Node,RBAC
// authorization, NodeRestriction), kube-controller-manager (node CIDR
// allocation) and kube-scheduler in one network namespace, and two
// macvz nodes (macvz serve + kubelet with a kubeconfig, each in its own
// network and mount namespace) on a veth LAN to it. The subtests drive
// it with kubectl. `make cluster-e2e` runs only this.
func TestCluster(t *testing.T) {
	c := startCluster(t, clusterMaxLinuxVMs)
	slices.SortStableFunc(clusterScenarios, func(a, b clusterScenario) int { return a.order - b.order })
	for _, sc := range clusterScenarios {
		t.Run(sc.name, func(t *testing.T) { sc.run(c, t) })
	}

	t.Logf("timings: control plane healthy %v; nodes registered and Ready %v (%s); pods Ready %v",
		c.cp.Started.Round(10*time.Millisecond), c.nodesReady.Round(10*time.Millisecond), fmtDurations(c.readyAt), c.podsReady.Round(10*time.Millisecond))
}

// startCluster starts the control plane, the registry with the test
// guest on the LAN and two macvz nodes (node-a, node-b, each with
// linuxVMs as vm.max_linux_vms; 0 = no bound) and returns once both are
// Ready with a pod CIDR and routes to each other's pods. Everything stops
// when t ends.
func startCluster(t testing.TB, linuxVMs int) *clusterTest {
	testutil.RequireRoot(t)
	nettest.Require(t)
	testutil.RequireTool(t, "nsenter", "util-linux")
	testutil.RequireTool(t, "unshare", "util-linux")
	testutil.RequireTool(t, "qemu-system-x86_64", "qemu-system-x86")
	crictl := requireCrictl(t)
	binDir := os.Getenv("KUBE_BIN")
	if binDir == "" {
		_, self, _, _ := runtime.Caller(0)
		binDir = filepath.Join(filepath.Dir(self), "tools", "bin")
	}
	bins, missing := cluster.FindBins(binDir, os.Getenv("KUBELET"))
	if len(missing) > 0 {
		testutil.Unavailable(t, "needs the Kubernetes binaries %s: run `make tools` (integration/tools/build.sh builds etcd and kubernetes v1.37.2 into integration/tools/bin)",
			strings.Join(missing, ", "))
	}
	plugins, err := netPlugins()
	if err != nil {
		t.Fatalf("building the CNI plugins: %v", err)
	}
	imgs, err := guestImages()
	if err != nil {
		t.Fatalf("building the test guest: %v", err)
	}
	reg := testregistry.Start(t, testregistry.Options{})
	for _, tag := range []string{guest.RefPlain, guest.RefHTTPD} {
		if err := reg.Push(context.Background(), "macvz/guest", tag, imgs[tag]); err != nil {
			t.Fatal(err)
		}
	}

	cp := cluster.Start(t, cluster.Options{
		Bins: bins, LANAddr: lanCP, ServiceCIDR: serviceCIDR, ClusterCIDR: clusterCIDR, NodeCIDRMaskSize: 24,
	})
	t.Logf("control plane (etcd, apiserver, controller-manager, scheduler) healthy in %v", cp.Started.Round(10*time.Millisecond))
	// The registry on the LAN, in the control plane's namespace: every
	// node pulls from it by the same ref.
	ln, err := cp.NS.Listen("tcp", lanCP+":5000")
	if err != nil {
		t.Fatal(err)
	}
	pullHost := reg.ServeOn(ln)
	c := &clusterTest{cp: cp, httpd: pullHost + "/macvz/guest:" + guest.RefHTTPD, reg: reg, pullHost: pullHost}
	c.nodeOpts = cluster.NodeOptions{
		Macvz:     macvzBin,
		Crictl:    crictl,
		PluginDir: plugins,
		Labels:    "macvz.io/runtime=macvz",
		LinuxVMs:  linuxVMs,
		MacvzTOML: fmt.Sprintf("[qemu]\naccel = \"tcg\"\n\n[registry.hosts.%q]\ninsecure = true\n", pullHost),
	}

	nodesStart := time.Now()
	for i, name := range []string{"node-a", "node-b"} {
		o := c.nodeOpts
		o.Name, o.LANAddr = name, fmt.Sprintf("10.99.0.%d", i+2)
		c.nodes = append(c.nodes, cp.AddNode(t, o))
	}
	// Ready needs the pod network: macvz reports NetworkReady once
	// kubelet has sent the pod CIDR the controller-manager gave the
	// node and the template is rendered.
	c.readyAt = map[string]time.Duration{}
	deadline := time.Now().Add(4 * time.Minute)
	for len(c.readyAt) < len(c.nodes) {
		for _, n := range c.nodes {
			if ok, how := n.Kubelet.Exited(); ok {
				c.fatal(t, "", "node %s: kubelet exited (%s)", n.Name, how)
			}
			if ok, how := n.Macvz.Exited(); ok {
				c.fatal(t, "", "node %s: macvz exited (%s)", n.Name, how)
			}
		}
		got := c.getNodes(t)
		for _, n := range c.nodes {
			kn, ok := got[n.Name]
			if _, seen := c.readyAt[n.Name]; !seen && ok && condition(kn.Status.Conditions, "Ready").Status == "True" && kn.Spec.PodCIDR != "" {
				c.readyAt[n.Name] = time.Since(nodesStart)
				t.Logf("node %s Ready (pod CIDR %s) %v after its start", n.Name, kn.Spec.PodCIDR, c.readyAt[n.Name].Round(10*time.Millisecond))
			}
		}
		if time.Now().After(deadline) {
			var why []string
			for _, n := range c.nodes {
				kn, ok := got[n.Name]
				if !ok {
					why = append(why, n.Name+": not registered")
					continue
				}
				r := condition(kn.Status.Conditions, "Ready")
				why = append(why, fmt.Sprintf("%s: Ready=%s (%s: %s), podCIDR %q", n.Name, r.Status, r.Reason, r.Message, kn.Spec.PodCIDR))
			}
			c.fatal(t, "", "the nodes are not all Ready with a pod CIDR after 4m:\n%s", strings.Join(why, "\n"))
		}
		time.Sleep(time.Second)
	}
	c.nodesReady = time.Since(nodesStart)

	// host-gw: each node routes the other's pod CIDR to its LAN address.
	nodes := c.getNodes(t)
	for _, n := range c.nodes {
		for _, o := range c.nodes {
			if o != n {
				n.NS.IP(t, "route", "replace", nodes[o.Name].Spec.PodCIDR, "via", o.LANAddr, "dev", "lan0")
			}
		}
	}

	return c
}

func fmtDurations(m map[string]time.Duration) string {
	var out []string
	for k, v := range m {
		out = append(out, fmt.Sprintf("%s %v", k, v.Round(10*time.Millisecond)))
	}
	slices.Sort(out)
	return strings.Join(out, ", ")
}

// testNodes: both nodes Ready, macvz as their runtime, distinct pod
// CIDRs, and each node's macvz rendered its CIDR into its conflist.
func (c *clusterTest) testNodes(t *testing.T) {
	t.Logf("kubectl get nodes -o wide:\n%s", c.cp.MustKubectl(t, "get", "nodes", "-o", "wide"))
	nodes := c.getNodes(t)
	clusterNet := netip.MustParsePrefix(clusterCIDR)
	cidrs := map[string]string{}
	for _, n := range c.nodes {
		kn, ok := nodes[n.Name]
		if !ok {
			c.fatal(t, "", "node %s is not registered", n.Name)
		}
		if r := condition(kn.Status.Conditions, "Ready"); r.Status != "True" {
			t.Errorf("node %s: Ready=%s (%s: %s)", n.Name, r.Status, r.Reason, r.Message)
		}
		out, err := n.Crictl("version")
		if err != nil {
			t.Fatalf("%v\n%s", err, out)
		}
		version := ""
		for _, l := range strings.Split(out, "\n") {
			if v, ok := strings.CutPrefix(l, "RuntimeVersion:"); ok {
				version = strings.TrimSpace(v)
			}
		}
		if want := "macvz://" + version; version == "" || kn.Status.NodeInfo.ContainerRuntimeVersion != want {
			t.Errorf("node %s: container runtime %q, want %q (crictl version:\n%s)", n.Name, kn.Status.NodeInfo.ContainerRuntimeVersion, want, out)
		}
		internal := ""
		for _, a := range kn.Status.Addresses {
			if a.Type == "InternalIP" {
				internal = a.Address
			}
		}
		if internal != n.LANAddr {
			t.Errorf("node %s: InternalIP %q, want its LAN address %s", n.Name, internal, n.LANAddr)
		}
		p, err := netip.ParsePrefix(kn.Spec.PodCIDR)
		if err != nil || p.Bits() != 24 || !clusterNet.Contains(p.Addr()) {
			t.Errorf("node %s: podCIDR %q, want a /24 of %s", n.Name, kn.Spec.PodCIDR, clusterCIDR)
			continue
		}
		cidrs[n.Name] = kn.Spec.PodCIDR
		// UpdateRuntimeConfig rendered the template with it.
		conf, err := os.ReadFile(filepath.Join(n.ConfDir, cluster.ConfName))
		if err != nil {
			t.Errorf("node %s: %v (UpdateRuntimeConfig did not render network.conf_template)\n%s", n.Name, err, n.Macvz.Describe(40))
		} else if !strings.Contains(string(conf), `"subnet": "`+kn.Spec.PodCIDR+`"`) {
			t.Errorf("node %s: %s does not have the node's pod CIDR %s:\n%s", n.Name, cluster.ConfName, kn.Spec.PodCIDR, conf)
		}
		if !n.Macvz.Contains("network configuration rendered from network.conf_template") || !n.Macvz.Contains(kn.Spec.PodCIDR) {
			t.Errorf("node %s: macvz did not log rendering network.conf_template with %s\n%s", n.Name, kn.Spec.PodCIDR, n.Macvz.Describe(40))
		}
	}
	if len(cidrs) == 2 && cidrs["node-a"] == cidrs["node-b"] {
		t.Errorf("both nodes have the pod CIDR %s", cidrs["node-a"])
	}
}

// webManifest is the RuntimeClass and a Deployment of the httpd test
// guest spread over the nodes, ready by kubelet's HTTP probe.
const webManifest = `apiVersion: node.k8s.io/v1
kind: RuntimeClass
metadata:
  name: macvz
handler: macvz
scheduling:
  nodeSelector:
    macvz.io/runtime: macvz
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  namespace: default
spec:
  replicas: %d
  selector:
    matchLabels:
      app: web
  template:
    metadata:
      labels:
        app: web
    spec:
      runtimeClassName: macvz
      terminationGracePeriodSeconds: 5
      topologySpreadConstraints:
      - maxSkew: 1
        topologyKey: kubernetes.io/hostname
        whenUnsatisfiable: DoNotSchedule
        # A cordoned (drained) node is no domain of the spread: its pods
        # are recreated on the others.
        nodeTaintsPolicy: Honor
        labelSelector:
          matchLabels:
            app: web
      containers:
      - name: httpd
        image: %s
        ports:
        - containerPort: 80
        readinessProbe:
          httpGet:
            path: /
            port: 80
          periodSeconds: 2
`

// testPods: a Deployment of two httpd guests, one per node, Ready
// through kubelet's HTTP probe, addresses from each node's CIDR, and a
// pod on each node fetching the other's page across the LAN (host-gw).
func (c *clusterTest) testPods(t *testing.T) {
	const replicas = 2
	start := time.Now()
	c.cp.Apply(t, fmt.Sprintf(webManifest, replicas, c.httpd))
	var pods []clusterPod
	deadline := time.Now().Add(8 * time.Minute)
	for {
		pods = c.getPods(t, "app=web")
		ready := 0
		for _, p := range pods {
			if condition(p.Status.Conditions, "Ready").Status == "True" {
				ready++
			}
		}
		if ready == replicas && len(pods) == replicas {
			break
		}
		if time.Now().After(deadline) {
			c.fatal(t, "app=web", "the Deployment's pods are not all Ready after 8m (%d of %d)", ready, replicas)
		}
		time.Sleep(2 * time.Second)
	}
	c.podsReady = time.Since(start)
	t.Logf("Deployment of %d applied → all Ready in %v\n%s", replicas, c.podsReady.Round(10*time.Millisecond),
		c.cp.MustKubectl(t, "get", "pods", "-l", "app=web", "-o", "wide"))

	nodes := c.getNodes(t)
	onNode := map[string]clusterPod{}
	for _, p := range pods {
		if _, dup := onNode[p.Spec.NodeName]; dup {
			c.fatal(t, "app=web", "two pods on node %s: the topology spread constraint was not honoured", p.Spec.NodeName)
		}
		onNode[p.Spec.NodeName] = p
		cidr, err := netip.ParsePrefix(nodes[p.Spec.NodeName].Spec.PodCIDR)
		ip, ierr := netip.ParseAddr(p.Status.PodIP)
		if err != nil || ierr != nil || !cidr.Contains(ip) {
			t.Errorf("pod %s on %s: IP %q not in the node's pod CIDR %q", p.Metadata.Name, p.Spec.NodeName, p.Status.PodIP, nodes[p.Spec.NodeName].Spec.PodCIDR)
		}
	}
	for _, n := range c.nodes {
		if _, ok := onNode[n.Name]; !ok {
			c.fatal(t, "app=web", "no pod on node %s", n.Name)
		}
	}
	// Each pod fetches the other's page by IP, through kubectl exec
	// (apiserver → kubelet → macvz's streaming server → the guest).
	for _, pair := range [][2]string{{"node-a", "node-b"}, {"node-b", "node-a"}} {
		from, to := onNode[pair[0]], onNode[pair[1]]
		var out string
		var err error
		deadline := time.Now().Add(time.Minute)
		for {
			out, err = c.cp.Kubectl("exec", from.Metadata.Name, "--", "wget", "-q", "-O", "-", "http://"+to.Status.PodIP+"/")
			if err == nil && strings.Contains(out, "hello from the macvz guest") {
				break
			}
			if time.Now().After(deadline) {
				c.fatal(t, "app=web", "pod %s on %s fetching http://%s/ (pod %s on %s): %v\n%s\nroutes on %s:\n%s", from.Metadata.Name, pair[0],
					to.Status.PodIP, to.Metadata.Name, pair[1], err, out, pair[0], c.node(pair[0]).NS.IP(t, "route"))
			}
			time.Sleep(2 * time.Second)
		}
		t.Logf("pod on %s fetched the page of the pod on %s (%s)", pair[0], pair[1], to.Status.PodIP)
	}
}

// waitUntil polls cond every second until it holds; after timeout it
// fails t with what, cond's last word and the cluster's state.
func (c *clusterTest) waitUntil(t testing.TB, selector, what string, timeout time.Duration, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		ok, why := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			c.fatal(t, selector, "%s: not so after %v: %s", what, timeout, why)
		}
		time.Sleep(time.Second)
	}
}

func (c *clusterTest) node(name string) *cluster.Node {
	for _, n := range c.nodes {
		if n.Name == name {
			return n
		}
	}
	return nil
}

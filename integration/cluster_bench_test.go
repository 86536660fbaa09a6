//go:build linux

package integration

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/macvz/macvz/integration/cluster"
)

// clusterBenchReplicas is the Deployment BenchmarkClusterDeploy applies.
const clusterBenchReplicas = 10

// benchManifest is a Deployment of the httpd guest spread evenly over
// the nodes, Ready by an HTTP probe every second (as close to "httpd
// answers" as kubelet measures).
const benchManifest = `apiVersion: apps/v1
kind: Deployment
metadata:
  name: bench
  namespace: default
spec:
  replicas: %d
  selector:
    matchLabels:
      app: bench
  template:
    metadata:
      labels:
        app: bench
    spec:
      runtimeClassName: macvz
      terminationGracePeriodSeconds: 5
      topologySpreadConstraints:
      - maxSkew: 1
        topologyKey: kubernetes.io/hostname
        whenUnsatisfiable: DoNotSchedule
        labelSelector:
          matchLabels:
            app: bench
      containers:
      - name: httpd
        image: %s
        ports:
        - containerPort: 80
        readinessProbe:
          httpGet:
            path: /
            port: 80
          periodSeconds: 1
`

// BenchmarkClusterDeploy measures what the control plane adds to pod
// start on macvz nodes. Each round: kubectl apply of a 10-replica
// Deployment of the httpd guest (5 a node) until every pod is Ready,
// per node and overall; the kubectl exec round trip (apiserver →
// kubelet → macvz's streaming server → the guest) against crictl exec
// of the same container; then, with both kubelets stopped, the same 10
// pods started directly with crictl (runp, create, start: 5 a node at
// once, as kubelet's pod workers do) until each one's httpd answers
// from its node. Both phases start on nodes that have the image and
// its warm state and run no VM. Needs root and `make tools`; run with
// `make bench` or
//
//	go test -run '^$' -bench ClusterDeploy -benchtime 1x ./integration/
func BenchmarkClusterDeploy(b *testing.B) {
	c := startCluster(b, 0)
	// Both nodes pull the image and save its warm state before anything
	// is timed.
	c.cp.Apply(b, fmt.Sprintf(webManifest, 2, c.httpd))
	c.waitWeb(b, 2, 8*time.Minute)
	c.cp.MustKubectl(b, "delete", "deployment", "web", "--wait=true")
	c.waitNoVMs(b)

	var kubectlAll, crictlAll, execK, execC []time.Duration
	perNode := map[string][]time.Duration{}
	b.ResetTimer()
	for range b.N {
		overall, byNode, ek, ec := c.benchKubectl(b)
		kubectlAll = append(kubectlAll, overall)
		execK, execC = append(execK, ek...), append(execC, ec...)
		for n, d := range byNode {
			perNode["kubectl-"+n] = append(perNode["kubectl-"+n], d)
		}
		overall, byNode = c.benchCrictl(b)
		crictlAll = append(crictlAll, overall)
		for n, d := range byNode {
			perNode["crictl-"+n] = append(perNode["crictl-"+n], d)
		}
	}
	b.StopTimer()
	k, cr := p50(kubectlAll), p50(crictlAll)
	b.ReportMetric(k.Seconds(), "kubectl-s")
	b.ReportMetric(cr.Seconds(), "crictl-s")
	b.ReportMetric(float64(k)/float64(cr), "ratio")
	for name, ds := range perNode {
		b.ReportMetric(p50(ds).Seconds(), name+"-s")
	}
	ek, ec := p50(execK), p50(execC)
	b.ReportMetric(float64(ek.Microseconds())/1000, "exec-kubectl-ms")
	b.ReportMetric(float64(ec.Microseconds())/1000, "exec-crictl-ms")
	b.ReportMetric(float64(ek)/float64(ec), "exec-ratio")
	b.Logf("%d pods (%d a node): kubectl apply → all Ready %v, crictl → all answering %v; per node %v; exec kubectl %v, crictl %v",
		clusterBenchReplicas, clusterBenchReplicas/2, kubectlAll, crictlAll, perNode, execK, execC)
}

// waitNoVMs waits until no node runs a VM (kubelet stops a deleted
// pod's sandbox at once and removes it later, in its garbage
// collection).
func (c *clusterTest) waitNoVMs(t testing.TB) {
	t.Helper()
	c.waitUntil(t, "", "no VM running on the nodes", 3*time.Minute, func() (bool, string) {
		var running []string
		for _, n := range c.nodes {
			out, err := n.Crictl("pods", "--state", "ready", "-q")
			if err != nil {
				return false, err.Error()
			}
			if ids := strings.Fields(out); len(ids) > 0 {
				running = append(running, fmt.Sprintf("%s: %v", n.Name, ids))
			}
		}
		return len(running) == 0, strings.Join(running, "; ")
	})
}

// benchKubectl applies the bench Deployment and times every pod from the
// apply to Ready; then times 10 exec round trips through kubectl and 10
// through crictl into one pod; then deletes the Deployment.
func (c *clusterTest) benchKubectl(t testing.TB) (time.Duration, map[string]time.Duration, []time.Duration, []time.Duration) {
	t.Helper()
	start := time.Now()
	c.cp.Apply(t, fmt.Sprintf(benchManifest, clusterBenchReplicas, c.httpd))
	readyAt := map[string]time.Duration{} // pod → since the apply
	podNode := map[string]string{}
	deadline := start.Add(15 * time.Minute)
	for len(readyAt) < clusterBenchReplicas {
		for _, p := range c.getPods(t, "app=bench") {
			if _, seen := readyAt[p.Metadata.Name]; !seen && condition(p.Status.Conditions, "Ready").Status == "True" {
				readyAt[p.Metadata.Name] = time.Since(start)
				podNode[p.Metadata.Name] = p.Spec.NodeName
			}
		}
		if time.Now().After(deadline) {
			c.fatal(t, "app=bench", "the bench Deployment: %d of %d pods Ready after 15m", len(readyAt), clusterBenchReplicas)
		}
		time.Sleep(200 * time.Millisecond)
	}
	overall := time.Duration(0)
	byNode := map[string]time.Duration{}
	for p, d := range readyAt {
		overall = max(overall, d)
		byNode[podNode[p]] = max(byNode[podNode[p]], d)
	}
	if len(byNode) != len(c.nodes) {
		c.fatal(t, "app=bench", "the bench Deployment's pods are on %d nodes, want %d", len(byNode), len(c.nodes))
	}

	// The exec round trip: a command that does nothing, so what is timed
	// is the path.
	var pod clusterPod
	for _, p := range c.getPods(t, "app=bench") {
		if p.Spec.NodeName == "node-a" {
			pod = p
			break
		}
	}
	node := c.node("node-a")
	ctr, err := node.Crictl("ps", "-q", "--pod", sandboxIDs(t, node, pod.Metadata.Name)[0])
	if err != nil || len(strings.Fields(ctr)) != 1 {
		c.fatal(t, "app=bench", "the container of pod %s on node-a: %v %q", pod.Metadata.Name, err, ctr)
	}
	var viaKubectl, viaCrictl []time.Duration
	for range 10 {
		s := time.Now()
		if out, err := c.cp.Kubectl("exec", pod.Metadata.Name, "--", "true"); err != nil {
			c.fatal(t, "app=bench", "kubectl exec %s -- true: %v\n%s", pod.Metadata.Name, err, out)
		}
		viaKubectl = append(viaKubectl, time.Since(s))
		s = time.Now()
		if out, err := node.Crictl("exec", "-s", strings.TrimSpace(ctr), "true"); err != nil {
			c.fatal(t, "app=bench", "crictl exec -s %s true: %v\n%s", ctr, err, out)
		}
		viaCrictl = append(viaCrictl, time.Since(s))
	}

	c.cp.MustKubectl(t, "delete", "deployment", "bench", "--wait=true")
	c.waitNoPods(t, "app=bench", "kubectl delete deployment bench")
	c.waitNoVMs(t)
	return overall, byNode, viaKubectl, viaCrictl
}

// benchCrictl stops both kubelets (which would remove pods they did not
// make), removes every sandbox, starts the same pods directly through
// crictl and times each from the start to its httpd answering from its
// node; then removes them and starts the kubelets again.
func (c *clusterTest) benchCrictl(t testing.TB) (time.Duration, map[string]time.Duration) {
	t.Helper()
	for _, n := range c.nodes {
		n.StopKubelet()
		if out, err := n.Crictl("rmp", "-f", "-a"); err != nil {
			t.Fatalf("%v\n%s", err, out)
		}
	}
	perNode := clusterBenchReplicas / len(c.nodes)
	type result struct {
		node string
		d    time.Duration
		err  error
	}
	results := make(chan result, clusterBenchReplicas)
	var wg sync.WaitGroup
	start := time.Now()
	for _, n := range c.nodes {
		for i := range perNode {
			wg.Add(1)
			go func() {
				defer wg.Done()
				err := crictlHTTPDPod(n, fmt.Sprintf("bench-%d", i), c.httpd)
				results <- result{n.Name, time.Since(start), err}
			}()
		}
	}
	wg.Wait()
	close(results)
	overall := time.Duration(0)
	byNode := map[string]time.Duration{}
	var errs []string
	for r := range results {
		if r.err != nil {
			errs = append(errs, r.err.Error())
		}
		overall = max(overall, r.d)
		byNode[r.node] = max(byNode[r.node], r.d)
	}
	for _, n := range c.nodes {
		if out, err := n.Crictl("rmp", "-f", "-a"); err != nil {
			errs = append(errs, fmt.Sprintf("%v\n%s", err, out))
		}
		n.StartKubelet(t)
	}
	if len(errs) > 0 {
		c.fatal(t, "", "starting the pods through crictl:\n%s", strings.Join(errs, "\n"))
	}
	c.waitUntil(t, "", "both nodes Ready after their kubelets' restart", 3*time.Minute, func() (bool, string) {
		var notReady []string
		for name, kn := range c.getNodes(t) {
			if r := condition(kn.Status.Conditions, "Ready"); r.Status != "True" {
				notReady = append(notReady, fmt.Sprintf("%s: %s (%s)", name, r.Status, r.Message))
			}
		}
		return len(notReady) == 0, strings.Join(notReady, "; ")
	})
	return overall, byNode
}

// crictlHTTPDPod runs the httpd guest as pod name on node n through
// crictl (runp, create, start) and returns once its httpd answers a GET
// from the node.
func crictlHTTPDPod(n *cluster.Node, name, image string) error {
	dir := filepath.Join(n.Dir, "bench", name)
	if err := os.MkdirAll(filepath.Join(dir, "logs"), 0o755); err != nil {
		return err
	}
	write := func(file string, v any) (string, error) {
		b, err := json.Marshal(v)
		if err != nil {
			return "", err
		}
		p := filepath.Join(dir, file)
		return p, os.WriteFile(p, b, 0o600)
	}
	pod, err := write("pod.json", map[string]any{
		"metadata":      map[string]any{"name": name, "namespace": "bench", "uid": name + "-" + time.Now().Format("150405.000")},
		"log_directory": filepath.Join(dir, "logs"),
	})
	if err != nil {
		return err
	}
	ctr, err := write("ctr.json", map[string]any{
		"metadata": map[string]any{"name": "httpd"},
		"image":    map[string]any{"image": image},
		"log_path": "httpd.log",
	})
	if err != nil {
		return err
	}
	id, err := n.Crictl("runp", pod)
	if err != nil {
		return fmt.Errorf("%v: %s", err, id)
	}
	id = strings.TrimSpace(id)
	cid, err := n.Crictl("create", id, ctr, pod)
	if err != nil {
		return fmt.Errorf("%v: %s", err, cid)
	}
	if out, err := n.Crictl("start", strings.TrimSpace(cid)); err != nil {
		return fmt.Errorf("%v: %s", err, out)
	}
	var st struct {
		Status struct {
			Network struct {
				IP string `json:"ip"`
			} `json:"network"`
		} `json:"status"`
	}
	out, err := n.Crictl("inspectp", "-o", "json", id)
	if err != nil {
		return fmt.Errorf("%v: %s", err, out)
	}
	if err := json.Unmarshal([]byte(out), &st); err != nil || st.Status.Network.IP == "" {
		return fmt.Errorf("crictl inspectp %s on %s: no pod IP (%v)", id, n.Name, err)
	}
	// As kubelet's probe: a GET every second until it is answered.
	deadline := time.Now().Add(10 * time.Minute)
	for {
		if httpAnswers(n, st.Status.Network.IP) {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("pod %s (%s) on %s: httpd does not answer after 10m", name, st.Status.Network.IP, n.Name)
		}
		time.Sleep(time.Second)
	}
}

// httpAnswers reports whether http://ip/ answers 200 from the node.
func httpAnswers(n *cluster.Node, ip string) bool {
	conn, err := n.NS.Dial("tcp", ip+":80")
	if err != nil {
		return false
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(2 * time.Second))
	fmt.Fprintf(conn, "GET / HTTP/1.0\r\nHost: %s\r\n\r\n", ip)
	b, _ := io.ReadAll(conn)
	first, _, _ := strings.Cut(string(b), "\n")
	return slices.Contains(strings.Fields(first), "200")
}

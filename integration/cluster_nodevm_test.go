//go:build linux

package integration

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/macvz/macvz/integration/cluster"
	"github.com/macvz/macvz/integration/guest"
)

func init() {
	// Last: its node joins the cluster for this scenario alone.
	registerClusterScenario(90, "nodevm", (*clusterTest).testNodeVM)
}

// The node-VM node: a third node on the LAN whose kubelet runs in
// macvz's node VM. Its taint keeps the other scenarios' pods off it
// while it exists.
const (
	nodeVMNode  = "node-vm"
	nodeVMLAN   = "10.99.0.10"
	nodeVMTaint = "macvz.io/node-vm=true:NoSchedule"
	nodeVMPod   = "nodevm-web"
	// nodeVMHostPod is on the node's network: its IP is the node IP.
	nodeVMHostPod = "nodevm-hostnet"
)

// nodeVMConfigManifest is what nodeVMPodManifest's volumes name.
const nodeVMConfigManifest = `apiVersion: v1
kind: ConfigMap
metadata:
  name: nodevm-config
  namespace: default
data:
  greeting: hello
---
apiVersion: v1
kind: Secret
metadata:
  name: nodevm-secret
  namespace: default
stringData:
  password: s3cret
`

// nodeVMPodManifest is the httpd guest on the node-VM node, Ready by an
// HTTP probe that kubelet in the node VM sends to the pod IP, printing
// "tick N" every half second for kubectl logs -f, with kubelet's
// memory-backed volumes: a ConfigMap, a Secret and the service
// account's projected token (nodeVMConfigManifest first).
const nodeVMPodManifest = `apiVersion: v1
kind: Pod
metadata:
  name: %[1]s
  namespace: default
spec:
  nodeSelector:
    kubernetes.io/hostname: %[2]s
  tolerations:
  - key: macvz.io/node-vm
    operator: Exists
    effect: NoSchedule
  terminationGracePeriodSeconds: 2
  volumes:
  - name: config
    configMap: {name: nodevm-config}
  - name: secret
    secret: {secretName: nodevm-secret}
  containers:
  - name: httpd
    image: %[3]s
    command: ["/bin/sh", "-c", "i=0; while :; do i=$((i+1)); echo \"tick $i\"; sleep 0.5; done & exec /bin/busybox httpd -f -v -p 80 -h /www"]
    ports:
    - containerPort: 80
    readinessProbe:
      httpGet:
        path: /
        port: 80
      periodSeconds: 2
    volumeMounts:
    - {name: config, mountPath: /etc/nodevm-config}
    - {name: secret, mountPath: /etc/nodevm-secret}
`

// nodeVMHostPodManifest is the httpd guest on the node's network: its
// port 80 is forwarded from the node, and kubelet probes it at the node
// IP. From the node VM that reaches the host only because the node IP
// is not local in the VM (its local route is gone); else kubelet would
// probe the VM's own port 80 and the pod would never be Ready.
const nodeVMHostPodManifest = `apiVersion: v1
kind: Pod
metadata:
  name: %[1]s
  namespace: default
spec:
  hostNetwork: true
  nodeSelector:
    kubernetes.io/hostname: %[2]s
  tolerations:
  - key: macvz.io/node-vm
    operator: Exists
    effect: NoSchedule
  automountServiceAccountToken: false
  terminationGracePeriodSeconds: 2
  containers:
  - name: httpd
    image: %[3]s
    ports:
    - containerPort: 80
    readinessProbe:
      httpGet:
        path: /
        port: 80
      periodSeconds: 2
`

// nodeVMNodeOptions pushes the node image to the cluster's registry and
// returns the options of the node-VM node (tainted; its Node object is
// deleted at the end of t).
func (c *clusterTest) nodeVMNodeOptions(t testing.TB) cluster.NodeOptions {
	t.Helper()
	img, err := nodeImage()
	if err != nil {
		t.Fatalf("building the node image: %v", err)
	}
	if err := c.reg.Push(context.Background(), "macvz/node", guest.RefNode, img); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if out, err := c.cp.Kubectl("delete", "node", nodeVMNode, "--ignore-not-found"); err != nil {
			t.Errorf("deleting node %s: %v\n%s", nodeVMNode, err, out)
		}
	})
	o := c.nodeOpts
	o.Name, o.LANAddr = nodeVMNode, nodeVMLAN
	o.NodeImage = c.pullHost + "/macvz/node:" + guest.RefNode
	o.Taints = nodeVMTaint
	return o
}

// testNodeVM: a node whose kubelet (v1.37.2, unmodified) runs in macvz's
// node VM joins the cluster: it registers with the LAN address of its
// host (the VM has only QEMU's user-mode NAT; the address is on the VM's
// loopback without its local route) and turns Ready; a pod scheduled to
// it is made Ready by kubelet's HTTP probe, which leaves the VM through
// the NAT to the pod IP on the host's bridge; and kubectl exec, logs -f,
// port-forward and cp reach the pod through the apiserver, kubelet's
// forwarded port 10250 on the host, kubelet in the VM, and the daemon's
// streaming server over the VM's agent channel.
func (c *clusterTest) testNodeVM(t *testing.T) {
	// The Node object goes after the pod's deletion and the node's stop
	// (nodeVMNodeOptions' cleanup runs last), so that nothing after this
	// scenario sees a NotReady node.
	o := c.nodeVMNodeOptions(t)
	// Its VM slots (o.LinuxVMs, as the other nodes') reach kubelet in
	// the node VM through the node VM's device plugin.
	start := time.Now()
	n := c.cp.AddNode(t, o)
	if n.Kubelet != nil {
		t.Fatalf("node %s runs a native kubelet", n.Name)
	}

	// Registered and Ready with a pod CIDR: kubelet in the VM reached the
	// apiserver and macvz's CRI, and the node's network is ready.
	var kn clusterNode
	c.waitUntil(t, "", "node "+nodeVMNode+" (kubelet in the node VM) Ready with a pod CIDR", 4*time.Minute, func() (bool, string) {
		if ok, how := n.Macvz.Exited(); ok {
			c.fatal(t, "", "node %s: macvz exited (%s)\n%s", n.Name, how, n.Describe(100, 100))
		}
		got, ok := c.getNodes(t)[nodeVMNode]
		if !ok {
			return false, "not registered; node VM " + n.NodeVMState() + "\n" + n.Describe(30, 0)
		}
		kn = got
		r := condition(kn.Status.Conditions, "Ready")
		return r.Status == "True" && kn.Spec.PodCIDR != "", fmt.Sprintf("Ready=%s (%s: %s), podCIDR %q", r.Status, r.Reason, r.Message, kn.Spec.PodCIDR)
	})
	t.Logf("node %s Ready %v after its start (kubelet %s in the node VM, %s)", nodeVMNode, time.Since(start).Round(10*time.Millisecond),
		kn.Status.NodeInfo.KubeletVersion, kn.Status.NodeInfo.OSImage)
	internal := ""
	for _, a := range kn.Status.Addresses {
		if a.Type == "InternalIP" {
			internal = a.Address
		}
	}
	if internal != nodeVMLAN {
		t.Errorf("node %s: InternalIP %q, want its host's LAN address %s", nodeVMNode, internal, nodeVMLAN)
	}
	if !strings.HasPrefix(kn.Status.NodeInfo.ContainerRuntimeVersion, "macvz://") {
		t.Errorf("node %s: container runtime %q, want macvz", nodeVMNode, kn.Status.NodeInfo.ContainerRuntimeVersion)
	}
	if o.LinuxVMs > 0 {
		c.waitSlots(t, "", "node "+nodeVMNode+"'s VM slots as macvz.io/linux-vm devices", map[string]vmSlots{nodeVMNode: {o.LinuxVMs, o.LinuxVMs}}, 2*time.Minute)
	}

	// Two pods on it, one on the pod network, one on the node's, Ready
	// through kubelet's HTTP probes from the node VM.
	t.Cleanup(func() {
		if out, err := c.cp.Kubectl("delete", "pod", nodeVMPod, nodeVMHostPod, "--ignore-not-found", "--wait=true", "--timeout=2m"); err != nil {
			t.Errorf("deleting pods %s and %s: %v\n%s", nodeVMPod, nodeVMHostPod, err, out)
		}
	})
	t.Cleanup(func() {
		c.cp.Kubectl("delete", "configmap/nodevm-config", "secret/nodevm-secret", "--ignore-not-found")
	})
	c.cp.Apply(t, nodeVMConfigManifest)
	start = time.Now()
	c.cp.Apply(t, fmt.Sprintf(nodeVMPodManifest, nodeVMPod, nodeVMNode, c.httpd)+"---\n"+fmt.Sprintf(nodeVMHostPodManifest, nodeVMHostPod, nodeVMNode, c.httpd))
	pods := map[string]clusterPod{}
	c.waitUntil(t, "", "pods "+nodeVMPod+" and "+nodeVMHostPod+" on "+nodeVMNode+" Ready (kubelet's HTTP probes from the node VM)", 5*time.Minute, func() (bool, string) {
		var why []string
		for _, name := range []string{nodeVMPod, nodeVMHostPod} {
			out, err := c.cp.Kubectl("get", "pod", name, "-o", "json")
			if err != nil {
				return false, err.Error()
			}
			var p clusterPod
			if err := json.Unmarshal([]byte(out), &p); err != nil {
				return false, err.Error()
			}
			if r := condition(p.Status.Conditions, "Ready"); r.Status != "True" {
				why = append(why, fmt.Sprintf("%s: phase %s, Ready=%s (%s: %s)", name, p.Status.Phase, r.Status, r.Reason, r.Message))
			} else if _, seen := pods[name]; !seen {
				pods[name] = p
				t.Logf("pod %s Ready %v after it was applied (its IP %s, on %s)", name, time.Since(start).Round(10*time.Millisecond), p.Status.PodIP, p.Spec.NodeName)
			}
		}
		return len(why) == 0, strings.Join(why, "\n") + "\n" + n.Describe(40, 20)
	})
	pod := pods[nodeVMPod]
	if hp := pods[nodeVMHostPod]; hp.Spec.NodeName != nodeVMNode || hp.Status.PodIP != nodeVMLAN {
		t.Errorf("pod %s (host network): on %q with IP %q, want on %s with the node IP %s", nodeVMHostPod, hp.Spec.NodeName, hp.Status.PodIP, nodeVMNode, nodeVMLAN)
	}
	cidr, err := netip.ParsePrefix(kn.Spec.PodCIDR)
	ip, ierr := netip.ParseAddr(pod.Status.PodIP)
	if pod.Spec.NodeName != nodeVMNode || err != nil || ierr != nil || !cidr.Contains(ip) {
		c.fatal(t, "", "pod %s: on %q with IP %q; want on %s with an IP of its pod CIDR %s", nodeVMPod, pod.Spec.NodeName, pod.Status.PodIP, nodeVMNode, kn.Spec.PodCIDR)
	}
	// httpd logs each request it serves: the probes came from the
	// node's side of the pod network (its bridge, the CIDR's first
	// address), where QEMU's NAT makes the node VM's connections.
	from := fmt.Sprintf("[::ffff:%s]:", cidr.Addr().Next())
	if out, err := c.cp.Kubectl("logs", nodeVMPod); err != nil || !regexp.MustCompile(`(?m)^`+regexp.QuoteMeta(from)+`\d+: response:200$`).MatchString(out) {
		t.Errorf("kubectl logs %s: httpd logged no request from %s answered 200 (the readiness probe's): %v\n%s", nodeVMPod, from, err, lastLines(out, 20))
	}

	t.Run("volumes", func(t *testing.T) {
		read := func(path string) string {
			out, err := c.cp.Kubectl("exec", nodeVMPod, "--", "cat", path)
			if err != nil {
				return "error: " + err.Error()
			}
			return out
		}
		for path, want := range map[string]string{
			"/etc/nodevm-config/greeting":                             "hello",
			"/etc/nodevm-secret/password":                             "s3cret",
			"/var/run/secrets/kubernetes.io/serviceaccount/namespace": "default",
		} {
			if got := read(path); got != want {
				c.fatal(t, "", "%s in pod %s: %q, want %q (kubelet in the node VM wrote it)\n%s", path, nodeVMPod, got, want, n.Describe(60, 40))
			}
		}
		if tok := read("/var/run/secrets/kubernetes.io/serviceaccount/token"); strings.Count(tok, ".") != 2 {
			t.Errorf("the service account token in pod %s is not a JWT: %q", nodeVMPod, tok)
		}
		// On the node's host the Secret is a tmpfs, as under a native
		// kubelet: the node VM's kubelet had the daemon mount it.
		mi, err := n.Exec("cat", "/proc/self/mountinfo")
		secretDir := "/var/lib/kubelet/pods/" + pod.Metadata.UID + "/volumes/kubernetes.io~secret/secret"
		if err != nil || !regexp.MustCompile(`(?m)^\S+ \S+ \S+ \S+ `+regexp.QuoteMeta(secretDir)+` .* - tmpfs `).MatchString(mi) {
			t.Errorf("node %s: %s is not a tmpfs mount on the host (%v)", nodeVMNode, secretDir, err)
		}
		// An update of the ConfigMap reaches the running pod's guest.
		c.cp.MustKubectl(t, "patch", "configmap", "nodevm-config", "-p", `{"data":{"greeting":"updated"}}`)
		start := time.Now()
		c.waitUntil(t, "", "the ConfigMap's update in pod "+nodeVMPod, 4*time.Minute, func() (bool, string) {
			got := read("/etc/nodevm-config/greeting")
			return got == "updated", fmt.Sprintf("greeting %q", got)
		})
		t.Logf("ConfigMap, Secret and token in pod %s on the node VM; the ConfigMap's update arrived %v after the patch", nodeVMPod, time.Since(start).Round(100*time.Millisecond))
	})

	t.Run("exec", func(t *testing.T) {
		stdout, stderr, code, err := c.streamKubectlRun("", "exec", nodeVMPod, "--", "sh", "-c", "echo to-stdout; echo to-stderr >&2; exit 3")
		if code != 3 || stdout != "to-stdout\n" || !strings.Contains(stderr, "to-stderr") {
			c.fatal(t, "", "kubectl exec %s -- sh -c '...; exit 3': exit code %d (%v), want 3; stdout %q, want \"to-stdout\\n\"; stderr %q\n%s",
				nodeVMPod, code, err, stdout, stderr, n.Describe(40, 40))
		}
		stdout, _, code, err = c.streamKubectlRun("through stdin\n", "exec", "-i", nodeVMPod, "--", "cat")
		if code != 0 || stdout != "through stdin\n" {
			c.fatal(t, "", "kubectl exec -i %s -- cat: exit code %d (%v), stdout %q, want the line sent", nodeVMPod, code, err, stdout)
		}
		t.Logf("kubectl exec through kubelet in the node VM: stdout, stderr, stdin, exit code 3")
	})

	t.Run("logs -f", func(t *testing.T) {
		out, err := c.cp.Kubectl("logs", nodeVMPod)
		if err != nil || streamLastTick(out) < 1 {
			c.fatal(t, "", "kubectl logs %s: no tick line: %v\n%s", nodeVMPod, err, lastLines(out, 20))
		}
		from := streamLastTick(out)
		f := c.streamBg(t, "logs", "-f", nodeVMPod)
		if _, ok := f.waitLine(30*time.Second, func(l string) bool { return l == "tick 1" }); !ok {
			c.fatal(t, "", "kubectl logs -f %s did not print the past lines in 30s:\n%s", nodeVMPod, f.describe())
		}
		// kubelet rereads a followed log at least every second.
		want := fmt.Sprintf("tick %d", from+8)
		followed := time.Now()
		if _, ok := f.waitLine(30*time.Second, func(l string) bool { return l == want }); !ok {
			c.fatal(t, "", "kubectl logs -f %s: no %q within 30s (the snapshot before ended at tick %d): following does not deliver new lines:\n%s",
				nodeVMPod, want, from, f.describe())
		}
		if ok, how := f.exited(); ok {
			c.fatal(t, "", "kubectl logs -f %s ended (%s) while the pod runs", nodeVMPod, how)
		}
		f.stop()
		t.Logf("kubectl logs -f %s: %q arrived %v after the past lines", nodeVMPod, want, time.Since(followed).Round(10*time.Millisecond))
	})

	t.Run("port-forward", func(t *testing.T) {
		pf := c.streamBg(t, "port-forward", "pod/"+nodeVMPod, ":80")
		re := regexp.MustCompile(`Forwarding from 127\.0\.0\.1:(\d+) -> 80`)
		line, ok := pf.waitLine(30*time.Second, func(l string) bool { return re.MatchString(l) })
		if !ok {
			c.fatal(t, "", "kubectl port-forward pod/%s :80 did not report its local port in 30s:\n%s", nodeVMPod, pf.describe())
		}
		addr := "127.0.0.1:" + re.FindStringSubmatch(line)[1]
		for i := range 2 {
			page, err := c.streamFetch(addr)
			if err != nil || !strings.Contains(page, strings.TrimSpace(guest.IndexHTML)) {
				c.fatal(t, "", "GET http://%s/ (kubectl port-forward to pod %s), connection %d: %v\n%s\nkubectl:\n%s\n%s",
					addr, nodeVMPod, i+1, err, page, pf.describe(), n.Describe(40, 40))
			}
		}
		pf.stop()
		t.Logf("kubectl port-forward pod/%s %s -> 80: the page arrived, twice", nodeVMPod, addr)
	})

	t.Run("cp", func(t *testing.T) {
		dir := t.TempDir()
		data := make([]byte, 256<<10)
		rand.Read(data)
		sum := sha256.Sum256(data)
		in := filepath.Join(dir, "in.bin")
		if err := os.WriteFile(in, data, 0o644); err != nil {
			t.Fatal(err)
		}
		const remote = "/tmp/cp-nodevm.bin"
		if out, err := c.cp.Kubectl("cp", in, nodeVMPod+":"+remote); err != nil {
			c.fatal(t, "", "kubectl cp %s %s:%s: %v\n%s", in, nodeVMPod, remote, err, out)
		}
		if got, err := c.cp.Kubectl("exec", nodeVMPod, "--", "sha256sum", remote); err != nil || !strings.HasPrefix(got, hex.EncodeToString(sum[:])) {
			c.fatal(t, "", "after kubectl cp into %s, sha256sum %s in the guest: %v\n%q, want %x", nodeVMPod, remote, err, got, sum)
		}
		out := filepath.Join(dir, "out.bin")
		if o, err := c.cp.Kubectl("cp", nodeVMPod+":"+remote, out); err != nil {
			c.fatal(t, "", "kubectl cp %s:%s %s: %v\n%s", nodeVMPod, remote, out, err, o)
		}
		back, err := os.ReadFile(out)
		if err != nil || !bytes.Equal(back, data) {
			c.fatal(t, "", "the file copied back out of %s: %v, %d bytes (sha256 %x), want the %d bytes sent (sha256 %x)",
				nodeVMPod, err, len(back), sha256.Sum256(back), len(data), sum)
		}
		t.Logf("kubectl cp of %d KiB into pod %s and back out: equal", len(data)>>10, nodeVMPod)
	})

	// In-place resize through the node VM's kubelet (with pod cgroups
	// in the node VM), as on a Mac.
	t.Run("resize", func(t *testing.T) { c.resizeOn(t, nodeVMNode, "resize-vm") })
}

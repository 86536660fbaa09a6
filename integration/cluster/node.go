//go:build linux

package cluster

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/macvz/macvz/integration/nettest"
)

// NodeOptions configure a macvz node.
type NodeOptions struct {
	// Name is the node's name (kubelet's --hostname-override).
	Name string
	// LANAddr is its address on the control plane's LAN /24.
	LANAddr string
	// Macvz and Crictl are the binaries (macvz-shim is next to macvz).
	Macvz, Crictl string
	// PluginDir holds macvz-net and host-local.
	PluginDir string
	// MacvzTOML is appended to the node's macvz configuration ([qemu],
	// [registry.hosts...]).
	MacvzTOML string
	// Labels are kubelet's --node-labels (k=v,...).
	Labels string
	// LinuxVMs, when > 0, is macvz's [vm] max_linux_vms: its device
	// plugin then shows kubelet that many macvz.io/linux-vm devices
	// (MacvzTOML must then have no [vm] table of its own).
	LinuxVMs int
	// Taints are kubelet's --register-with-taints (k=v:Effect,...).
	Taints string
	// NodeImage, when set, runs the node's kubelet in macvz's node VM
	// booted from this image (as the node pulls it) instead of on the
	// node: macvz's [node] gets the flags the native kubelet would, less
	// its root and certificate directories (the VM's own), and shares
	// kubelet's host paths and its configuration directory (KubeDir).
	NodeImage string
}

// Node is a macvz node: macvz serve and kubelet in the node's network
// namespace and in a mount namespace of its own, where per-node
// directories are bind-mounted over the host paths kubelet hard-codes
// (kubeletHostPaths), so two kubelets on one host do not share them.
type Node struct {
	Name, LANAddr string
	NS            *nettest.NetNS
	// Dir holds everything of the node: macvz's root, state, socket and
	// configuration, kubelet's root and configuration, the logs.
	Dir    string
	Socket string
	// ConfDir is macvz's network.conf_dir, where UpdateRuntimeConfig
	// renders ConfName.
	ConfDir string
	Macvz   *Proc
	// Kubelet is the native kubelet; nil on a node-VM node (NodeVM),
	// whose kubelet runs in the node VM.
	Kubelet *Proc
	// NodeVM: kubelet runs in macvz's node VM (NodeOptions.NodeImage).
	NodeVM bool
	// KubeDir holds kubelet's configuration, kubeconfig and
	// certificates (shared into the node VM on a node-VM node).
	KubeDir       string
	macvzBin      string
	holder        *exec.Cmd
	holderDone    chan struct{}
	crictl        string
	cp            *ControlPlane
	kubeletConfig string
	// LinuxVMs is NodeOptions.LinuxVMs.
	LinuxVMs int
	// KubeProxy is the node's kube-proxy once StartKubeProxy ran; it is
	// stopped with the node.
	KubeProxy *Proc
	// macvzArgv and kubeletArgv start macvz and kubelet (again, for
	// RestartMacvz and RestartKubelet).
	macvzArgv, kubeletArgv []string
}

// ConfName is the conflist macvz renders from network.conf_template.
const ConfName = "10-macvz.conflist"

// kubeletHostPaths are the host paths kubelet writes whatever its
// --root-dir: the device-plugin socket and checkpoint, the pod and
// container log directories. Each node gets its own, bind-mounted in
// its mount namespace.
var kubeletHostPaths = []string{"/var/lib/kubelet", "/var/log/pods", "/var/log/containers"}

// AddNode starts a node: its network namespace on the LAN (a veth to the
// control plane's bridge, the control plane as default gateway), its
// certificates and kubeconfig, its mount namespace, macvz serve with a
// network.conf_template (bridge-tap + host-local over {{.PodCIDR}}), then
// kubelet registering with the apiserver. It returns once kubelet runs;
// the caller waits for the Node to be Ready. Everything is stopped and
// removed when t ends: kubelet, the pods (crictl rmp -fa), macvz, any
// shim or VM left, the namespaces, the directories.
func (c *ControlPlane) AddNode(t testing.TB, o NodeOptions) *Node {
	t.Helper()
	n := &Node{Name: o.Name, LANAddr: o.LANAddr, crictl: o.Crictl, cp: c, LinuxVMs: o.LinuxVMs, NodeVM: o.NodeImage != "", macvzBin: o.Macvz}
	c.Nodes = append(c.Nodes, n)
	n.NS = nettest.NewNetNS(t, o.Name)
	veth := "lan-" + o.Name
	if len(veth) > 15 {
		veth = veth[:15]
	}
	c.NS.IP(t, "link", "add", veth, "type", "veth", "peer", "name", "lan0", "netns", n.NS.Name)
	c.NS.IP(t, "link", "set", veth, "master", lanBridge, "up")
	n.NS.IP(t, "addr", "add", o.LANAddr+"/24", "dev", "lan0")
	n.NS.IP(t, "link", "set", "lan0", "up")
	n.NS.IP(t, "route", "add", "default", "via", c.Opts.LANAddr)

	// Short: the sandboxes' sockets live under the state directory
	// (sun_path is 108 bytes).
	dir, err := os.MkdirTemp("", "mvz")
	if err != nil {
		t.Fatal(err)
	}
	n.Dir = dir
	n.KubeDir = dir
	if n.NodeVM {
		// The node VM sees only the directories shared into it.
		n.KubeDir = filepath.Join(dir, "kube")
	}
	n.Socket = filepath.Join(dir, "macvz.sock")
	n.ConfDir = filepath.Join(dir, "net.d")
	// The bind mounts need their mount points on the host: those this
	// test makes go at its end (after every node's processes, as
	// cleanups run last first). They stay empty on the host.
	for _, p := range kubeletHostPaths {
		if _, err := os.Stat(p); os.IsNotExist(err) {
			if err := os.MkdirAll(p, 0o755); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() {
				if err := os.Remove(p); err != nil && !os.IsNotExist(err) {
					t.Errorf("removing the mount point %s this test made: %v", p, err)
				}
			})
		}
	}
	t.Cleanup(func() { n.stop(t) })

	// kubelet's flags, in the form a TOML list takes them too. The
	// node VM's kubelet keeps its root dir (a tmpfs in the VM, with
	// pods/ shared) and its certificate directory in the VM.
	args := []string{"--config=" + n.kubeletConfigPath(), "--kubeconfig=" + filepath.Join(n.KubeDir, "kubelet.conf"),
		"--hostname-override=" + o.Name, "--node-ip=" + o.LANAddr, "--v=2"}
	if !n.NodeVM {
		args = append(args, "--root-dir="+filepath.Join(dir, "kubelet"), "--cert-dir="+filepath.Join(dir, "kubelet-pki"))
	}
	if o.Labels != "" {
		args = append(args, "--node-labels="+o.Labels)
	}
	if o.Taints != "" {
		args = append(args, "--register-with-taints="+o.Taints)
	}
	if err := n.writeConfig(o, args); err != nil {
		t.Fatal(err)
	}
	if !n.NodeVM {
		if err := n.makeCgroupRoot(); err != nil {
			t.Fatal(err)
		}
	}
	n.startHolder(t)

	n.macvzArgv = []string{o.Macvz, "serve", "--config", filepath.Join(dir, "macvz.toml")}
	n.startMacvz(t)
	if n.NodeVM {
		return n
	}
	n.kubeletArgv = append([]string{c.Opts.Bins.Kubelet}, args...)
	n.Kubelet = n.start(t, "kubelet-"+o.Name, n.kubeletArgv[0], n.kubeletArgv[1:]...)
	return n
}

func (n *Node) kubeletConfigPath() string { return filepath.Join(n.KubeDir, "kubelet.yaml") }

// NodeVMKubeletLog is the node VM's kubelet log (CRI format), on a
// node-VM node.
func (n *Node) NodeVMKubeletLog() string { return filepath.Join(n.Dir, "node-log", "kubelet.log") }

// MacvzCLI runs `macvz <args> --config <the node's>` (macvz node
// status, stop, ...; the admin socket is a file the host's namespaces
// reach).
func (n *Node) MacvzCLI(args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, n.macvzBin, append(args, "--config", filepath.Join(n.Dir, "macvz.toml"))...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("macvz %s on node %s: %w", strings.Join(args, " "), n.Name, err)
	}
	return string(out), nil
}

// NodeVMState is `macvz node status`'s state ("" when it does not
// answer).
func (n *Node) NodeVMState() string {
	out, err := n.MacvzCLI("node", "status", "--json")
	if err != nil {
		return ""
	}
	var st struct {
		State string `json:"state"`
	}
	json.Unmarshal([]byte(out), &st)
	return st.State
}

// stopNodeVM removes the node VM (kubelet with it): it is no pod, so
// crictl rmp does not see it, and it outlives macvz.
func (n *Node) stopNodeVM(t testing.TB) {
	if n.Macvz == nil {
		return
	}
	if ok, _ := n.Macvz.Exited(); ok {
		return
	}
	if out, err := n.MacvzCLI("node", "stop"); err != nil {
		t.Errorf("node %s: %v\n%s", n.Name, err, out)
		return
	}
	deadline := time.Now().Add(time.Minute)
	for n.NodeVMState() != "stopped" {
		if time.Now().After(deadline) {
			t.Errorf("node %s: the node VM is not stopped a minute after macvz node stop", n.Name)
			return
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// startMacvz starts macvz serve and waits until its socket answers.
func (n *Node) startMacvz(t testing.TB) {
	t.Helper()
	n.Macvz = n.start(t, "macvz-"+n.Name, n.macvzArgv[0], n.macvzArgv[1:]...)
	deadline := time.Now().Add(30 * time.Second)
	for {
		if c, err := net.Dial("unix", n.Socket); err == nil {
			c.Close()
			return
		}
		if ok, _ := n.Macvz.Exited(); ok || time.Now().After(deadline) {
			t.Fatalf("node %s: macvz did not serve %s within 30s\n%s", n.Name, n.Socket, n.Macvz.Describe(80))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// RestartMacvz stops macvz (SIGKILL when kill, else SIGTERM and a grace
// period) and starts it again with the same configuration; it returns
// once the new daemon serves its socket. Its log goes on in the same
// file.
func (n *Node) RestartMacvz(t testing.TB, kill bool) {
	t.Helper()
	n.Macvz.end(kill, 20*time.Second)
	n.startMacvz(t)
}

// RestartKubelet stops kubelet (SIGKILL when kill, else SIGTERM and a
// grace period) and starts it again with the same flags.
func (n *Node) RestartKubelet(t testing.TB, kill bool) {
	t.Helper()
	n.Kubelet.end(kill, 20*time.Second)
	n.StartKubelet(t)
}

// StopKubelet stops kubelet (SIGTERM, then SIGKILL after 20s): the
// node's pods stay as they are; StartKubelet starts it again.
func (n *Node) StopKubelet() { n.Kubelet.Stop(20 * time.Second) }

// StartKubelet starts kubelet again with the flags AddNode gave it.
func (n *Node) StartKubelet(t testing.TB) {
	t.Helper()
	n.Kubelet = n.start(t, n.Kubelet.Name, n.kubeletArgv[0], n.kubeletArgv[1:]...)
}

// writeConfig writes the node's certificates, kubeconfig, macvz
// configuration and template, and KubeletConfiguration.
func (n *Node) writeConfig(o NodeOptions, kubeletArgs []string) error {
	p, dir := n.cp.PKI, n.Dir
	client, err := p.ClientCert("kubelet-"+o.Name, "system:node:"+o.Name, "system:nodes")
	if err != nil {
		return err
	}
	if err := os.MkdirAll(n.KubeDir, 0o755); err != nil {
		return err
	}
	if err := p.WriteKubeconfig(filepath.Join(n.KubeDir, "kubelet.conf"), n.cp.Server, "system:node:"+o.Name, client); err != nil {
		return err
	}
	// kubelet's serving certificate, from the cluster CA: the apiserver
	// checks it (--kubelet-certificate-authority) when it proxies exec,
	// logs and port-forward.
	serving, err := p.ServingCert("kubelet-serving-"+o.Name, o.Name, []string{o.Name}, []net.IP{net.ParseIP(o.LANAddr)})
	if err != nil {
		return err
	}
	for _, d := range []string{"root", "state", "net.d", "ipam", "kubelet", "kubelet-pki", "var-lib-kubelet", "log-pods", "log-containers"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o755); err != nil {
			return err
		}
	}
	tmpl := fmt.Sprintf(`{"cniVersion": "1.1.0", "name": "macvz", "plugins": [{
  "type": "macvz-net", "mode": "bridge-tap", "bridge": "macvz0", "nonMasqueradeCIDRs": [%q],
  "ipam": {"type": "host-local", "ranges": [[{"subnet": "{{.PodCIDR}}"}]], "routes": [{"dst": "0.0.0.0/0"}], "dataDir": %q},
  "capabilities": {"portMappings": true, "dns": true, "mac": true}}]}
`, n.cp.Opts.ClusterCIDR, filepath.Join(dir, "ipam"))
	if err := os.WriteFile(filepath.Join(dir, "net.conflist.tmpl"), []byte(tmpl), 0o644); err != nil {
		return err
	}
	// macvz's device plugin reads kubelet's pod-resources socket next to
	// the device-plugin directory (/var/lib/kubelet/pod-resources); this
	// kubelet's --root-dir puts it under dir/kubelet.
	if err := os.Symlink(filepath.Join(dir, "kubelet", "pod-resources"), filepath.Join(dir, "var-lib-kubelet", "pod-resources")); err != nil {
		return err
	}
	vm := ""
	if o.LinuxVMs > 0 {
		vm = fmt.Sprintf("[vm]\nmax_linux_vms = %d\n", o.LinuxVMs)
	}
	caFile, certFile, keyFile := p.CA.CertFile, serving.CertFile, serving.KeyFile
	if n.NodeVM {
		// kubelet's files in KubeDir, which the node VM shares, rather
		// than the whole cluster PKI (its CA key among it).
		caFile, certFile, keyFile = filepath.Join(n.KubeDir, "ca.crt"), filepath.Join(n.KubeDir, "kubelet.crt"), filepath.Join(n.KubeDir, "kubelet.key")
		for f, b := range map[string][]byte{caFile: p.CA.CertPEM, certFile: serving.CertPEM, keyFile: serving.KeyPEM} {
			if err := os.WriteFile(f, b, 0o600); err != nil {
				return err
			}
		}
		// Shared: kubelet's pods/ (its root dir stays the VM's tmpfs),
		// the log directories (the node's, through its mount
		// namespace) and KubeDir. 1 GiB and one CPU: kubelet's needs,
		// not the host's size.
		vm += fmt.Sprintf(`
[node]
enabled = true
image = %q
kubelet_args = [%s]
shares = [%s]
cpus = 1
memory_bytes = %d
log_dir = %q
`, o.NodeImage, tomlStrings(kubeletArgs...), tomlStrings("/var/lib/kubelet/pods", "/var/log/pods", "/var/log/containers", n.KubeDir),
			1<<30, filepath.Dir(n.NodeVMKubeletLog()))
	}
	// cgroupfs whatever the host runs: the native kubelets' pod cgroups
	// go below a plain cgroupRoot directory (makeCgroupRoot), which a
	// systemd driver would take as a slice.
	cfg := fmt.Sprintf(`root = %q
state = %q
socket = %q
cgroup_driver = "cgroupfs"

[log]
level = "debug"

[network]
conf_dir = %q
conf_template = %q
bin_dirs = [%q]

%s
%s
`, filepath.Join(dir, "root"), filepath.Join(dir, "state"), n.Socket, n.ConfDir,
		filepath.Join(dir, "net.conflist.tmpl"), o.PluginDir, vm, o.MacvzTOML)
	if err := os.WriteFile(filepath.Join(dir, "macvz.toml"), []byte(cfg), 0o600); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "crictl.yaml"), nil, 0o600); err != nil {
		return err
	}
	n.kubeletConfig = n.kubeletConfigPath()
	kc := fmt.Sprintf(`apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
containerRuntimeEndpoint: unix://%[1]s
imageServiceEndpoint: unix://%[1]s
runtimeRequestTimeout: 4m
address: %[2]s
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
tlsCertFile: %[3]s
tlsPrivateKeyFile: %[4]s
serverTLSBootstrap: false
# The apiserver's requests (exec, logs, port-forward) carry its client
# certificate from the cluster CA; kubelet asks the apiserver whether
# the user may (SubjectAccessReview).
authentication:
  anonymous:
    enabled: false
  webhook:
    enabled: true
  x509:
    clientCAFile: %[5]s
authorization:
  mode: Webhook
clusterDomain: cluster.local
cgroupDriver: cgroupfs
%[7]s
enforceNodeAllocatable: []
failSwapOn: false
failCgroupV1: false
volumePluginDir: %[6]s/volume-plugins
serializeImagePulls: false
# The test host's disk may be fuller than kubelet's defaults allow; this
# test is not about eviction or image garbage collection.
evictionHard:
  memory.available: 100Mi
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
`, n.Socket, o.LANAddr, certFile, keyFile, caFile, dir, n.cgroupConfig())
	if n.NodeVM {
		// A ConfigMap's update reaches a running pod at kubelet's next
		// sync of it (1m by default): the nodevm scenario waits for one.
		kc += "syncFrequency: 10s\n"
	}
	return os.WriteFile(n.kubeletConfig, []byte(kc), 0o600)
}

// tomlStrings is ss as the items of a TOML list.
func tomlStrings(ss ...string) string {
	var out []string
	for _, s := range ss {
		out = append(out, strconv.Quote(s))
	}
	return strings.Join(out, ", ")
}

// startHolder starts the process that owns the node's mount namespace:
// unshare(1) in the node's network namespace makes a private copy of the
// host's mounts (the host's /sys and cgroup tree included, which kubelet
// needs), bind-mounts the node's directories over kubeletHostPaths and
// sleeps. macvz and kubelet join it (nsenter --target), so they see the
// same mounts: kubelet's volume mounts (the service-account token's
// tmpfs) are what macvz shares into the VMs. Nothing mounted there
// reaches the host, and it all goes when the last process in it exits.
func (n *Node) startHolder(t testing.TB) {
	t.Helper()
	script := `set -e
mount --bind "$1" /var/lib/kubelet
mount --bind "$2" /var/log/pods
mount --bind "$3" /var/log/containers
echo ready
exec sleep infinity`
	cmd := exec.Command("nsenter", "--net="+n.NS.Path, "unshare", "--mount", "--propagation", "private",
		"sh", "-c", script, "sh",
		filepath.Join(n.Dir, "var-lib-kubelet"), filepath.Join(n.Dir, "log-pods"), filepath.Join(n.Dir, "log-containers"))
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	n.holder, n.holderDone = cmd, make(chan struct{})
	line := make(chan string, 1)
	go func() {
		l, _ := bufio.NewReader(out).ReadString('\n')
		line <- strings.TrimSpace(l)
		cmd.Wait()
		close(n.holderDone)
	}()
	select {
	case l := <-line:
		if l != "ready" {
			<-n.holderDone
			t.Fatalf("node %s: making its mount namespace: %s: %s", n.Name, cmd.ProcessState, stderr.String())
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("node %s: the mount namespace's holder did not get ready in 30s: %s", n.Name, stderr.String())
	}
}

// start runs a node process in the node's network and mount namespaces.
func (n *Node) start(t testing.TB, name, bin string, args ...string) *Proc {
	t.Helper()
	argv := append([]string{"nsenter", "--target", strconv.Itoa(n.holder.Process.Pid), "--mount", "--net", "--", bin}, args...)
	p, err := startProc(name, filepath.Join(n.Dir, name+".log"), argv...)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// Exec runs a command in the node's namespaces (network and mount).
func (n *Node) Exec(name string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	argv := append([]string{"--target", strconv.Itoa(n.holder.Process.Pid), "--mount", "--net", "--", name}, args...)
	out, err := exec.CommandContext(ctx, "nsenter", argv...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("%s %s on node %s: %v: %s", name, strings.Join(args, " "), n.Name, err, out)
	}
	return string(out), nil
}

// Crictl runs crictl against the node's macvz.
func (n *Node) Crictl(args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	full := append([]string{"--config", filepath.Join(n.Dir, "crictl.yaml"), "--runtime-endpoint", "unix://" + n.Socket,
		"--image-endpoint", "unix://" + n.Socket, "--timeout", "4m"}, args...)
	var stdout, stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, n.crictl, full...)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.String() + stderr.String(), fmt.Errorf("crictl %s on node %s: %w", strings.Join(args, " "), n.Name, err)
	}
	return stdout.String(), nil
}

// Describe is the node's processes' log tails, for failure messages
// (on a node-VM node, the node VM's kubelet log's).
func (n *Node) Describe(kubeletLines, macvzLines int) string {
	k := n.Kubelet.Describe(kubeletLines)
	if n.NodeVM {
		b, err := os.ReadFile(n.NodeVMKubeletLog())
		if err != nil {
			k = fmt.Sprintf("---- kubelet in the node VM of %s: %v", n.Name, err)
		} else {
			k = fmt.Sprintf("---- kubelet in the node VM of %s, log %s, last %d lines:\n%s", n.Name, n.NodeVMKubeletLog(), kubeletLines, lastLines(string(b), kubeletLines))
		}
	}
	return k + "\n" + n.Macvz.Describe(macvzLines)
}

// stop is the node's cleanup: kubelet first (so it recreates nothing),
// then every pod through macvz, macvz, whatever VM or shim is left, the
// mount namespace's holder, the directory.
func (n *Node) stop(t testing.TB) {
	failed := t.Failed()
	n.KubeProxy.Stop(10 * time.Second)
	n.Kubelet.Stop(20 * time.Second)
	if n.NodeVM {
		n.stopNodeVM(t)
	}
	removed := false
	if n.Macvz != nil {
		if ok, _ := n.Macvz.Exited(); !ok {
			if out, err := n.Crictl("rmp", "-f", "-a"); err != nil {
				t.Errorf("node %s: removing the pods left: %v\n%s", n.Name, err, out)
			} else {
				removed = true
			}
		}
	}
	n.Macvz.Stop(20 * time.Second)
	if !n.NodeVM {
		n.removeCgroupRoot()
	}
	for _, p := range processesUnder(n.Dir + "/") {
		if removed {
			t.Errorf("node %s: process left after every pod was removed: %s", n.Name, p)
		}
		if pid, err := strconv.Atoi(strings.SplitN(p, ":", 2)[0]); err == nil {
			syscall.Kill(pid, syscall.SIGKILL)
		}
	}
	if n.holder != nil {
		n.holder.Process.Kill()
		<-n.holderDone
	}
	if failed || t.Failed() {
		t.Logf("node %s:\n%s", n.Name, n.Describe(150, 100))
		if n.KubeProxy != nil {
			t.Logf("node %s:\n%s", n.Name, n.KubeProxy.Describe(60))
		}
	}
	keepLog(n.Kubelet)
	if n.NodeVM {
		keepLog(&Proc{Name: "kubelet-" + n.Name, Log: n.NodeVMKubeletLog()})
	}
	keepLog(n.Macvz)
	keepLog(n.KubeProxy)
	if err := os.RemoveAll(n.Dir); err != nil {
		t.Errorf("node %s: removing %s: %v", n.Name, n.Dir, err)
	}
}

// Leftovers lists what of a pod is still on the node: sandboxes and
// containers macvz lists, shims and VMs (processes naming the state
// directory), sandbox state directories, mounts under them, macvz taps,
// host-local reservations and the plugin's per-pod nftables rules. An
// idle node has none.
func (n *Node) Leftovers() []string {
	var out []string
	for _, args := range [][]string{{"pods", "-q"}, {"ps", "-a", "-q"}} {
		got, err := n.Crictl(args...)
		if err != nil {
			out = append(out, err.Error())
		} else if ids := strings.Fields(got); len(ids) > 0 {
			out = append(out, fmt.Sprintf("crictl %s: %s", strings.Join(args, " "), strings.Join(ids, " ")))
		}
	}
	state := filepath.Join(n.Dir, "state")
	for _, p := range processesUnder(state + "/") {
		out = append(out, "process: "+p)
	}
	ents, err := os.ReadDir(filepath.Join(state, "sandboxes"))
	if err != nil && !os.IsNotExist(err) {
		out = append(out, err.Error())
	}
	for _, e := range ents {
		out = append(out, "sandbox state directory: "+filepath.Join(state, "sandboxes", e.Name()))
	}
	// The node's mounts are in its mount namespace: the holder's view.
	if b, err := os.ReadFile(fmt.Sprintf("/proc/%d/mountinfo", n.holder.Process.Pid)); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if f := strings.Fields(l); len(f) > 4 && strings.HasPrefix(f[4], state+"/") {
				out = append(out, "mount: "+f[4])
			}
		}
	}
	if links, err := n.Exec("ip", "-o", "link", "show"); err != nil {
		out = append(out, err.Error())
	} else {
		for _, l := range strings.Split(links, "\n") {
			if f := strings.Fields(l); len(f) > 1 && strings.HasPrefix(f[1], "mvz") {
				out = append(out, "tap: "+strings.TrimSuffix(f[1], ":"))
			}
		}
	}
	filepath.WalkDir(filepath.Join(n.Dir, "ipam"), func(p string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() && net.ParseIP(d.Name()) != nil {
			out = append(out, "IPAM reservation: "+p)
		}
		return nil
	})
	// Every rule macvz-net adds for an attachment carries a comment
	// naming it; the table's own rules say "macvz base".
	if rules, err := n.Exec("nft", "list", "table", "inet", "macvz"); err == nil {
		for _, l := range strings.Split(rules, "\n") {
			if strings.Contains(l, "comment") && !strings.Contains(l, `comment "macvz base"`) {
				out = append(out, "nftables rule: "+strings.TrimSpace(l))
			}
		}
	}
	return out
}

// SnapshotDirs counts the directories of macvz's snapshotter: the bases
// (unpacked images), warm-start states and one disk clone per sandbox.
func (n *Node) SnapshotDirs() (int, error) {
	ents, err := os.ReadDir(filepath.Join(n.Dir, "root", "snapshots", "snapshots"))
	return len(ents), err
}

// cgroupConfig is the node kubelet's pod cgroup setting: kubelet makes
// pod cgroups (its in-place resize needs them: with cgroupsPerQOS false
// v1.37.2 crashes on a resize). A native node's go under a cgroup root
// of its own, as two kubelets share the host's hierarchy; the node VM's
// kubelet is alone in its VM.
func (n *Node) cgroupConfig() string {
	if n.NodeVM {
		return "cgroupsPerQOS: true"
	}
	return "cgroupsPerQOS: true\ncgroupRoot: " + n.cgroupRoot()
}

func (n *Node) cgroupRoot() string { return "/macvz-e2e-" + n.Name }

// makeCgroupRoot creates the node's cgroup root in every hierarchy
// (kubelet refuses a root that does not exist); removeCgroupRoot removes
// it with what kubelet made below it, deepest first.
func (n *Node) makeCgroupRoot() error {
	for _, h := range cgroupHierarchies() {
		if err := os.MkdirAll(filepath.Join(h, n.cgroupRoot()), 0o755); err != nil {
			return err
		}
	}
	return nil
}

func (n *Node) removeCgroupRoot() {
	for _, h := range cgroupHierarchies() {
		root := filepath.Join(h, n.cgroupRoot())
		var dirs []string
		filepath.WalkDir(root, func(p string, d os.DirEntry, err error) error {
			if err == nil && d.IsDir() {
				dirs = append(dirs, p)
			}
			return nil
		})
		for i := len(dirs) - 1; i >= 0; i-- {
			syscall.Rmdir(dirs[i])
		}
	}
}

// cgroupHierarchies are the cgroup mounts: the v1 controllers' (and the
// unified one beside them), or the one v2 hierarchy.
func cgroupHierarchies() []string {
	var out []string
	b, _ := os.ReadFile("/proc/self/mounts")
	for _, l := range strings.Split(string(b), "\n") {
		f := strings.Fields(l)
		if len(f) >= 3 && (f[2] == "cgroup" || f[2] == "cgroup2") {
			out = append(out, f[1])
		}
	}
	return out
}

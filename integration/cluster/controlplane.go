//go:build linux

package cluster

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/macvz/macvz/integration/nettest"
)

// Bins are the binaries a cluster runs (integration/tools builds them).
type Bins struct {
	Etcd, APIServer, ControllerManager, Scheduler, Kubectl, Kubelet string
}

// FindBins looks for every binary in dir (kubelet may be elsewhere: a
// non-empty kubelet overrides) and returns the paths and the missing ones.
func FindBins(dir, kubelet string) (Bins, []string) {
	b := Bins{
		Etcd:              filepath.Join(dir, "etcd"),
		APIServer:         filepath.Join(dir, "kube-apiserver"),
		ControllerManager: filepath.Join(dir, "kube-controller-manager"),
		Scheduler:         filepath.Join(dir, "kube-scheduler"),
		Kubectl:           filepath.Join(dir, "kubectl"),
		Kubelet:           filepath.Join(dir, "kubelet"),
	}
	if kubelet != "" {
		b.Kubelet = kubelet
	}
	var missing []string
	for _, p := range []string{b.Etcd, b.APIServer, b.ControllerManager, b.Scheduler, b.Kubectl, b.Kubelet} {
		if fi, err := os.Stat(p); err != nil || fi.Mode()&0o111 == 0 {
			missing = append(missing, p)
		}
	}
	return b, missing
}

// Options configure a control plane.
type Options struct {
	Bins Bins
	// LANAddr is the control plane's address on the LAN (a /24 bridge in
	// its namespace the nodes join), which the apiserver advertises.
	LANAddr string
	// ServiceCIDR is the Services' range; its first address (the
	// kubernetes Service) is in the apiserver's certificate.
	ServiceCIDR string
	// ClusterCIDR is what the controller-manager cuts node pod CIDRs from
	// (NodeCIDRMaskSize each).
	ClusterCIDR      string
	NodeCIDRMaskSize int
}

// ControlPlane is etcd, kube-apiserver, kube-controller-manager and
// kube-scheduler in a network namespace of their own, which also holds
// the LAN bridge.
type ControlPlane struct {
	Opts Options
	NS   *nettest.NetNS
	Dir  string
	PKI  *PKI
	// Server is the apiserver's URL (https://LANAddr:6443).
	Server string
	// Admin is a kubeconfig in system:masters.
	Admin string
	// Etcd, APIServer, ControllerManager and Scheduler are the processes.
	Etcd, APIServer, ControllerManager, Scheduler *Proc
	// Started is how long Start took, to every component healthy.
	Started time.Duration
	// Nodes are the nodes added, in order.
	Nodes []*Node
	admin *http.Client
}

const lanBridge = "lanbr0"

// Start makes the control plane's namespace with the LAN bridge, the
// PKI, and starts etcd, the apiserver, the controller-manager and the
// scheduler, returning when each is healthy (the apiserver's /readyz
// with the admin certificate). Everything is stopped and removed when t
// ends; on failure the components' log tails are in t's log.
func Start(t testing.TB, o Options) *ControlPlane {
	t.Helper()
	start := time.Now()
	c := &ControlPlane{Opts: o, Server: "https://" + net.JoinHostPort(o.LANAddr, "6443")}
	c.NS = nettest.NewNetNS(t, "cp")
	c.NS.IP(t, "link", "add", lanBridge, "type", "bridge")
	c.NS.IP(t, "addr", "add", o.LANAddr+"/24", "dev", lanBridge)
	c.NS.IP(t, "link", "set", lanBridge, "up")

	dir, err := os.MkdirTemp("", "macvz-cluster-")
	if err != nil {
		t.Fatal(err)
	}
	c.Dir = dir
	t.Cleanup(func() {
		procs := []*Proc{c.Scheduler, c.ControllerManager, c.APIServer, c.Etcd}
		if t.Failed() {
			for _, p := range procs {
				if p != nil {
					t.Logf("%s", p.Describe(60))
				}
			}
		}
		for _, p := range procs {
			p.Stop(15 * time.Second)
			keepLog(p)
		}
		os.RemoveAll(dir)
	})
	if err := c.makePKI(); err != nil {
		t.Fatalf("making the cluster PKI: %v", err)
	}
	c.admin = c.httpClient(t)

	c.Etcd = c.start(t, "etcd", o.Bins.Etcd,
		"--name=e2e", "--data-dir="+filepath.Join(dir, "etcd"),
		"--listen-client-urls=http://127.0.0.1:2379", "--advertise-client-urls=http://127.0.0.1:2379",
		"--listen-peer-urls=http://127.0.0.1:2380", "--initial-advertise-peer-urls=http://127.0.0.1:2380",
		"--initial-cluster=e2e=http://127.0.0.1:2380",
		// A test cluster: no fsync (the CI disk is slow and shared).
		"--unsafe-no-fsync=true")
	c.waitHealthy(t, c.Etcd, "http://127.0.0.1:2379/health", time.Minute, &http.Client{Timeout: 5 * time.Second, Transport: c.transport(nil)})

	p := c.PKI
	pkiFile := func(name string) string { return filepath.Join(p.Dir, name) }
	c.APIServer = c.start(t, "kube-apiserver", o.Bins.APIServer,
		"--advertise-address="+o.LANAddr,
		"--bind-address=0.0.0.0", // inside the namespace only
		"--secure-port=6443",
		"--etcd-servers=http://127.0.0.1:2379",
		"--client-ca-file="+p.CA.CertFile,
		"--tls-cert-file="+pkiFile("apiserver.crt"), "--tls-private-key-file="+pkiFile("apiserver.key"),
		// exec, logs, attach, port-forward: the apiserver dials the
		// kubelet at its node's InternalIP (the node name does not
		// resolve here) and checks its serving certificate against the
		// cluster CA.
		"--kubelet-client-certificate="+pkiFile("apiserver-kubelet-client.crt"),
		"--kubelet-client-key="+pkiFile("apiserver-kubelet-client.key"),
		"--kubelet-certificate-authority="+p.CA.CertFile,
		"--kubelet-preferred-address-types=InternalIP",
		"--service-account-issuer=https://kubernetes.default.svc.cluster.local",
		"--service-account-key-file="+p.SAPub,
		"--service-account-signing-key-file="+p.SAKey,
		"--service-cluster-ip-range="+o.ServiceCIDR,
		"--authorization-mode=Node,RBAC",
		"--enable-admission-plugins=NodeRestriction",
		"--allow-privileged=true",
		"--requestheader-client-ca-file="+p.FrontProxyCA.CertFile,
		"--requestheader-allowed-names=front-proxy-client",
		"--requestheader-username-headers=X-Remote-User",
		"--requestheader-group-headers=X-Remote-Group",
		"--requestheader-extra-headers-prefix=X-Remote-Extra-",
		"--proxy-client-cert-file="+pkiFile("front-proxy-client.crt"),
		"--proxy-client-key-file="+pkiFile("front-proxy-client.key"),
		"--profiling=false",
		"--v=2")
	c.waitHealthy(t, c.APIServer, c.Server+"/readyz", 3*time.Minute, c.admin)

	c.ControllerManager = c.start(t, "kube-controller-manager", o.Bins.ControllerManager,
		"--kubeconfig="+filepath.Join(dir, "controller-manager.conf"),
		"--authentication-kubeconfig="+filepath.Join(dir, "controller-manager.conf"),
		"--authorization-kubeconfig="+filepath.Join(dir, "controller-manager.conf"),
		"--bind-address=127.0.0.1",
		"--leader-elect=false",
		"--controllers=*",
		"--allocate-node-cidrs=true",
		"--cluster-cidr="+o.ClusterCIDR,
		fmt.Sprintf("--node-cidr-mask-size=%d", o.NodeCIDRMaskSize),
		"--service-cluster-ip-range="+o.ServiceCIDR,
		"--service-account-private-key-file="+p.SAKey,
		"--use-service-account-credentials=true",
		"--root-ca-file="+p.CA.CertFile,
		"--cluster-signing-cert-file="+p.CA.CertFile,
		"--cluster-signing-key-file="+p.CA.KeyFile,
		"--cluster-name=macvz-e2e",
		"--v=2")
	c.Scheduler = c.start(t, "kube-scheduler", o.Bins.Scheduler,
		"--kubeconfig="+filepath.Join(dir, "scheduler.conf"),
		"--authentication-kubeconfig="+filepath.Join(dir, "scheduler.conf"),
		"--authorization-kubeconfig="+filepath.Join(dir, "scheduler.conf"),
		"--bind-address=127.0.0.1",
		"--leader-elect=false",
		"--v=2")
	// Their own secure ports (self-signed): /healthz is always allowed.
	insecure := &http.Client{Timeout: 5 * time.Second, Transport: c.transport(&tls.Config{InsecureSkipVerify: true})}
	c.waitHealthy(t, c.ControllerManager, "https://127.0.0.1:10257/healthz", 2*time.Minute, insecure)
	c.waitHealthy(t, c.Scheduler, "https://127.0.0.1:10259/healthz", 2*time.Minute, insecure)
	c.waitHealthy(t, c.APIServer, c.Server+"/readyz", time.Minute, c.admin)
	c.Started = time.Since(start)
	return c
}

// makePKI writes the CAs, the apiserver's serving and client
// certificates, and the kubeconfigs of the admin, the controller-manager
// and the scheduler.
func (c *ControlPlane) makePKI() error {
	p, err := NewPKI(filepath.Join(c.Dir, "pki"))
	if err != nil {
		return err
	}
	c.PKI = p
	_, svc, err := net.ParseCIDR(c.Opts.ServiceCIDR)
	if err != nil {
		return fmt.Errorf("service CIDR: %w", err)
	}
	kubeSvc := append(net.IP(nil), svc.IP.To4()...)
	kubeSvc[3]++
	if _, err := p.ServingCert("apiserver", "kube-apiserver",
		[]string{"kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc.cluster.local", "localhost"},
		[]net.IP{kubeSvc, net.ParseIP(c.Opts.LANAddr), net.ParseIP("127.0.0.1")}); err != nil {
		return err
	}
	if _, err := p.ClientCert("apiserver-kubelet-client", "kube-apiserver-kubelet-client", "system:masters"); err != nil {
		return err
	}
	if _, err := p.FrontProxyClient(); err != nil {
		return err
	}
	for _, u := range []struct{ file, name, cn, group string }{
		{"admin", "admin", "kubernetes-admin", "system:masters"},
		{"controller-manager", "controller-manager", "system:kube-controller-manager", ""},
		{"scheduler", "scheduler", "system:kube-scheduler", ""},
	} {
		var groups []string
		if u.group != "" {
			groups = []string{u.group}
		}
		ck, err := p.ClientCert(u.file, u.cn, groups...)
		if err != nil {
			return err
		}
		path := filepath.Join(c.Dir, u.file+".conf")
		if err := p.WriteKubeconfig(path, c.Server, u.name, ck); err != nil {
			return err
		}
		if u.file == "admin" {
			c.Admin = path
		}
	}
	return nil
}

// start runs a component inside the control plane's namespace.
func (c *ControlPlane) start(t testing.TB, name, bin string, args ...string) *Proc {
	t.Helper()
	argv := append([]string{"nsenter", "--net=" + c.NS.Path, bin}, args...)
	p, err := startProc(name, filepath.Join(c.Dir, name+".log"), argv...)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// transport dials inside the control plane's namespace.
func (c *ControlPlane) transport(tc *tls.Config) *http.Transport {
	return &http.Transport{
		TLSClientConfig: tc,
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			return c.NS.Dial(network, addr)
		},
		DisableKeepAlives: true,
	}
}

// httpClient talks to the apiserver as the admin, trusting the cluster CA.
func (c *ControlPlane) httpClient(t testing.TB) *http.Client {
	t.Helper()
	cert, err := tls.LoadX509KeyPair(filepath.Join(c.PKI.Dir, "admin.crt"), filepath.Join(c.PKI.Dir, "admin.key"))
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(c.PKI.CA.Cert)
	return &http.Client{Timeout: 10 * time.Second, Transport: c.transport(&tls.Config{RootCAs: pool, Certificates: []tls.Certificate{cert}})}
}

// waitHealthy polls url until it answers 200 "ok"; p exiting first or the
// timeout fails t with p's log tail and the last answer.
func (c *ControlPlane) waitHealthy(t testing.TB, p *Proc, url string, timeout time.Duration, client *http.Client) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	last := ""
	for {
		if ok, how := p.Exited(); ok {
			t.Fatalf("%s exited (%s) before %s answered; last answer: %s\n%s", p.Name, how, url, last, p.Describe(80))
		}
		resp, err := client.Get(url)
		if err == nil {
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
			last = fmt.Sprintf("%s: %s", resp.Status, lastLines(string(b), 20))
		} else {
			last = err.Error()
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s not healthy after %v: GET %s: %s\n%s", p.Name, timeout, url, last, p.Describe(80))
		}
		time.Sleep(250 * time.Millisecond)
	}
}

// Kubectl runs kubectl as the admin (inside the control plane's
// namespace) and returns its stdout; on failure the error has stderr.
func (c *ControlPlane) Kubectl(args ...string) (string, error) {
	return c.KubectlIn(nil, args...)
}

// KubectlCommand is the command line (nsenter first) of kubectl as the
// admin inside the control plane's namespace, for a kubectl the caller
// runs itself: in the background (port-forward, logs -f, attach), on a
// terminal (exec -it), or to read its exit code. nsenter execs kubectl,
// so the process started is kubectl's (signals reach it).
func (c *ControlPlane) KubectlCommand(args ...string) []string {
	return append([]string{"nsenter", "--net=" + c.NS.Path, c.Opts.Bins.Kubectl, "--kubeconfig", c.Admin}, args...)
}

// KubectlIn is Kubectl with stdin.
func (c *ControlPlane) KubectlIn(stdin []byte, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	argv := append([]string{"--net=" + c.NS.Path, c.Opts.Bins.Kubectl, "--kubeconfig", c.Admin}, args...)
	cmd := exec.CommandContext(ctx, "nsenter", argv...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if stdin != nil {
		cmd.Stdin = bytes.NewReader(stdin)
	}
	if err := cmd.Run(); err != nil {
		return stdout.String(), fmt.Errorf("kubectl %s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return stdout.String(), nil
}

// MustKubectl is Kubectl failing t on error, with the cluster's state.
func (c *ControlPlane) MustKubectl(t testing.TB, args ...string) string {
	t.Helper()
	out, err := c.Kubectl(args...)
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	return out
}

// Apply is `kubectl apply -f -` of manifest.
func (c *ControlPlane) Apply(t testing.TB, manifest string) {
	t.Helper()
	if out, err := c.KubectlIn([]byte(manifest), "apply", "-f", "-"); err != nil {
		t.Fatalf("%v\n%s\nmanifest:\n%s", err, out, manifest)
	}
}

// Dump is the cluster's state for a failure message: nodes, pods,
// descriptions of the pods matching selector ("" = none), recent events,
// and every process's log tail.
func (c *ControlPlane) Dump(selector string) string {
	var b strings.Builder
	run := func(args ...string) {
		out, err := c.Kubectl(args...)
		fmt.Fprintf(&b, "==== kubectl %s\n%s", strings.Join(args, " "), out)
		if err != nil {
			fmt.Fprintf(&b, "(%v)\n", err)
		}
	}
	run("get", "nodes", "-o", "wide")
	run("get", "pods", "-A", "-o", "wide")
	if selector != "" {
		run("describe", "pods", "-l", selector)
	}
	run("describe", "nodes")
	run("get", "events", "-A", "--sort-by=.lastTimestamp")
	for _, p := range []*Proc{c.APIServer, c.ControllerManager, c.Scheduler} {
		b.WriteString(p.Describe(30) + "\n")
	}
	for _, n := range c.Nodes {
		b.WriteString(n.Kubelet.Describe(80) + "\n")
		b.WriteString(n.Macvz.Describe(60) + "\n")
	}
	return b.String()
}

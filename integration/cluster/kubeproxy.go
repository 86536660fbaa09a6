//go:build linux

package cluster

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// Where a node's kube-proxy serves /healthz and /metrics: loopback of the
// node's network namespace, so nothing of it is reachable from the LAN.
const (
	KubeProxyHealthz = "127.0.0.1:10256"
	KubeProxyMetrics = "127.0.0.1:10249"
)

// StartKubeProxy starts kube-proxy (the binary bin) on the node, in its
// network and mount namespaces like kubelet: nftables mode, the control
// plane's cluster CIDR (pod traffic from it is not masqueraded),
// --hostname-override the node's name, a client certificate of its own
// as system:kube-proxy (the user the default ClusterRoleBinding
// system:node-proxier binds), /healthz and /metrics on the namespace's
// loopback only (KubeProxyHealthz, KubeProxyMetrics). It returns once
// /healthz answers 200 (kube-proxy has programmed its rules once); a
// second call returns the kube-proxy already running. It stops with the
// node; its log is n.KubeProxy.Log.
func (n *Node) StartKubeProxy(t testing.TB, bin string) *Proc {
	t.Helper()
	if n.KubeProxy != nil {
		if ok, how := n.KubeProxy.Exited(); ok {
			t.Fatalf("node %s: kube-proxy exited (%s)\n%s", n.Name, how, n.KubeProxy.Describe(80))
		}
		return n.KubeProxy
	}
	p := n.cp.PKI
	client, err := p.ClientCert("kube-proxy-"+n.Name, "system:kube-proxy")
	if err != nil {
		t.Fatal(err)
	}
	kubeconfig := filepath.Join(n.Dir, "kube-proxy.conf")
	if err := p.WriteKubeconfig(kubeconfig, n.cp.Server, "system:kube-proxy", client); err != nil {
		t.Fatal(err)
	}
	// conntrack: leave the namespace's table size and timeouts alone
	// (0 = do not set). oomScoreAdj 0: a test process stays killable.
	cfg := fmt.Sprintf(`apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection:
  kubeconfig: %q
mode: nftables
clusterCIDR: %q
hostnameOverride: %q
bindAddress: %q
healthzBindAddress: %q
metricsBindAddress: %q
oomScoreAdj: 0
conntrack:
  maxPerCore: 0
  min: 0
  tcpEstablishedTimeout: 0s
  tcpCloseWaitTimeout: 0s
nftables:
  syncPeriod: 30s
  minSyncPeriod: 0s
`, kubeconfig, n.cp.Opts.ClusterCIDR, n.Name, n.LANAddr, KubeProxyHealthz, KubeProxyMetrics)
	cfgPath := filepath.Join(n.Dir, "kube-proxy.yaml")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	n.KubeProxy = n.start(t, "kube-proxy-"+n.Name, bin, "--config", cfgPath, "--v", "2")

	hc := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			return n.NS.Dial(network, addr)
		},
		DisableKeepAlives: true,
	}}
	url := "http://" + KubeProxyHealthz + "/healthz"
	deadline := time.Now().Add(2 * time.Minute)
	last := ""
	for {
		if ok, how := n.KubeProxy.Exited(); ok {
			t.Fatalf("node %s: kube-proxy exited (%s) before %s answered\n%s", n.Name, how, url, n.KubeProxy.Describe(80))
		}
		resp, err := hc.Get(url)
		if err == nil {
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return n.KubeProxy
			}
			last = fmt.Sprintf("%s: %s", resp.Status, lastLines(string(b), 10))
		} else {
			last = err.Error()
		}
		if time.Now().After(deadline) {
			t.Fatalf("node %s: kube-proxy not healthy after 2m: GET %s (in the node's namespace): %s\n%s", n.Name, url, last, n.KubeProxy.Describe(80))
		}
		time.Sleep(250 * time.Millisecond)
	}
}

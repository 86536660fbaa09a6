package config

import (
	"runtime"
	"slices"
	"strings"
	"testing"

	"github.com/containerd/errdefs"
)

// [node]'s node_ip and ports: kubelet's API port by default, the node IP
// from kubelet_args' --node-ip (either form) when node_ip is unset, and
// clear errors for a bad address, a disagreement or a bad port.
func TestNodeIPAndPorts(t *testing.T) {
	cfg, err := Decode(strings.NewReader(""))
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(cfg.Node.Ports, []int{10250}) || cfg.Node.NodeIP != "" {
		t.Errorf("defaults: ports %v, node_ip %q; want [10250] and \"\"", cfg.Node.Ports, cfg.Node.NodeIP)
	}
	for _, args := range [][]string{{"--v=2", "--node-ip=10.0.0.5"}, {"--node-ip", "10.0.0.5", "--v=2"}, {"-node-ip=10.0.0.5"}} {
		if got := (Node{KubeletArgs: args}).KubeletNodeIP(); got != "10.0.0.5" {
			t.Errorf("KubeletNodeIP of %q = %q, want 10.0.0.5", args, got)
		}
	}
	if got := (Node{KubeletArgs: []string{"--node-labels=a=b"}}).KubeletNodeIP(); got != "" {
		t.Errorf("KubeletNodeIP without --node-ip = %q", got)
	}
	for args, want := range map[string]bool{"--kubeconfig=/k.conf": true, "--bootstrap-kubeconfig /b.conf": true, "--config=/k.yaml": false} {
		if got := (Node{KubeletArgs: strings.Fields(args)}).JoinsCluster(); got != want {
			t.Errorf("JoinsCluster of %q = %v, want %v", args, got, want)
		}
	}
	cfg, err = Decode(strings.NewReader("[node]\nnode_ip = \"10.0.0.5\"\nports = [10250, 4194]\nkubelet_args = [\"--node-ip=10.0.0.5\"]\n"))
	if err != nil || cfg.Node.NodeIP != "10.0.0.5" || !slices.Equal(cfg.Node.Ports, []int{10250, 4194}) {
		t.Errorf("node_ip and ports set: %v, %+v", err, cfg.Node)
	}
	for name, tc := range map[string]struct{ in, want string }{
		"bad node_ip":       {"[node]\nnode_ip = \"host.local\"", "node.node_ip"},
		"dual-stack":        {"[node]\nkubelet_args = [\"--node-ip=10.0.0.5,fd00::5\"]", "one ip address"},
		"disagreeing":       {"[node]\nnode_ip = \"10.0.0.5\"\nkubelet_args = [\"--node-ip\", \"10.0.0.6\"]", "differs"},
		"port out of range": {"[node]\nports = [0]", "node.ports"},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := Decode(strings.NewReader(tc.in))
			if err == nil || !errdefs.IsInvalidArgument(err) || !strings.Contains(strings.ToLower(err.Error()), tc.want) {
				t.Errorf("error %v, want InvalidArgument mentioning %q", err, tc.want)
			}
		})
	}
}

// [node] network: the platform's default ("pod" on a Mac, whose NAT
// keeps VMs apart; "host" elsewhere), either value set, anything else an
// InvalidArgument naming the key.
func TestNodeNetwork(t *testing.T) {
	cfg, err := Decode(strings.NewReader(""))
	if err != nil {
		t.Fatal(err)
	}
	want := NodeNetworkHost
	if runtime.GOOS == "darwin" {
		want = NodeNetworkPod
	}
	if cfg.Node.Network != want {
		t.Errorf("default node.network %q, want %q", cfg.Node.Network, want)
	}
	for _, v := range []string{NodeNetworkHost, NodeNetworkPod} {
		cfg, err := Decode(strings.NewReader("[node]\nnetwork = \"" + v + "\"\n"))
		if err != nil || cfg.Node.Network != v {
			t.Errorf("network = %q: %v, %q", v, err, cfg.Node.Network)
		}
	}
	for _, v := range []string{"", "nat", "Pod"} {
		_, err := Decode(strings.NewReader("[node]\nnetwork = \"" + v + "\"\n"))
		if err == nil || !errdefs.IsInvalidArgument(err) || !strings.Contains(err.Error(), "node.network") {
			t.Errorf("network = %q: error %v, want InvalidArgument naming node.network", v, err)
		}
	}
}

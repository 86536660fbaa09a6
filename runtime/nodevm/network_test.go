package nodevm

import (
	"context"
	"slices"
	"strings"
	"testing"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// The node VM's sandbox on either network: the host's (NODE, kubelet's
// ports forwarded by the NAT) or the pod network (POD, the same ports as
// hostPorts on the node IP, the host's resolvers); the node IP is on the
// VM's loopback either way, so kubelet reports the host's address.
func TestPodConfigNetwork(t *testing.T) {
	dns := &runtimeapi.DNSConfig{Servers: []string{"192.0.2.53"}, Searches: []string{"example.org"}}
	for _, pod := range []bool{false, true} {
		s := New(Config{Image: "node", NodeIP: "10.99.0.7", Ports: []int{10250}, PodNetwork: pod, DNS: dns}, nil, nil)
		pc := s.podConfig()
		want := runtimeapi.NamespaceMode_NODE
		if pod {
			want = runtimeapi.NamespaceMode_POD
		}
		if got := pc.GetLinux().GetSecurityContext().GetNamespaceOptions().GetNetwork(); got != want {
			t.Errorf("pod network %v: sandbox network %v, want %v", pod, got, want)
		}
		pm := pc.GetPortMappings()
		if len(pm) != 1 || pm[0].GetHostIp() != "10.99.0.7" || pm[0].GetHostPort() != 10250 || pm[0].GetContainerPort() != 10250 || pm[0].GetProtocol() != runtimeapi.Protocol_TCP {
			t.Errorf("pod network %v: port mappings %v, want 10.99.0.7:10250 → 10250/tcp", pod, pm)
		}
		if pod && (pc.GetDnsConfig() == nil || !slices.Equal(pc.GetDnsConfig().GetServers(), dns.Servers)) {
			t.Errorf("pod network: DNS %v, want %v", pc.GetDnsConfig(), dns)
		}
		if !pod && pc.GetDnsConfig() != nil {
			t.Errorf("host network: DNS %v, want none (the NAT's resolver)", pc.GetDnsConfig())
		}
		cmd := strings.Join(s.containerConfig().GetCommand(), " ")
		if !strings.Contains(cmd, "ip addr add 10.99.0.7/32 dev lo") || !strings.Contains(cmd, "accept_local=1") {
			t.Errorf("pod network %v: kubelet's command %q does not put the node IP on the loopback", pod, cmd)
		}
		if args := s.containerConfig().GetArgs(); !slices.Contains(args, "--node-ip=10.99.0.7") || !slices.Contains(args, "--address=0.0.0.0") {
			t.Errorf("pod network %v: kubelet's args %v", pod, args)
		}
	}
}

// On the pod network the status has the node VM's pod IP, and a running
// node VM on the host's network (made before [node] network changed)
// is made again on the pod network rather than adopted.
func TestSupervisorPodNetwork(t *testing.T) {
	fast(t)
	f := newFake()
	f.pulled = true
	hostCfg := New(testConfig(), f, nil).podConfig()
	f.sbs["old"] = &runtimeapi.PodSandbox{Id: "old", Labels: map[string]string{Label: "true"}, State: runtimeapi.PodSandboxState_SANDBOX_READY}
	f.podCfgs = map[string]*runtimeapi.PodSandboxConfig{"old": hostCfg}
	f.ctrs["k"] = &runtimeapi.Container{Id: "k", PodSandboxId: "old", Metadata: &runtimeapi.ContainerMetadata{Name: Container}, State: runtimeapi.ContainerState_CONTAINER_RUNNING}

	cfg := testConfig()
	cfg.PodNetwork = true
	s := New(cfg, f, nil)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { s.Run(ctx); close(done) }()
	t.Cleanup(func() {
		cancel()
		<-done
	})
	waitUntil(t, "node VM running", func() bool { return s.Status().State == "running" })
	st := s.Status()
	if st.SandboxID == "old" || st.PodIP != "10.88.0."+strings.TrimPrefix(st.SandboxID, "sb") {
		t.Errorf("status %+v: want a new node VM with its pod IP", st)
	}
	f.mu.Lock()
	_, left := f.sbs["old"]
	f.mu.Unlock()
	if left {
		t.Error("the node VM on the host's network was left running")
	}

	// Stopped, it has no pod IP.
	s.Stop()
	waitUntil(t, "node VM stopped", func() bool { return s.Status().State == "stopped" })
	if st := s.Status(); st.PodIP != "" {
		t.Errorf("stopped: status %+v, want no pod IP", st)
	}
}

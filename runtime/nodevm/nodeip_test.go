package nodevm

import (
	"slices"
	"strconv"
	"strings"
	"testing"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// The node IP: forwarded ports bound on it, kubelet told it and
// listening on every address, the address on the VM's loopback without
// its local route.
func TestNodeIPAndPorts(t *testing.T) {
	s := New(Config{Image: "node", NodeIP: "10.99.0.7", Ports: []int{10250, 10255},
		KubeletArgs: []string{"--config=/k/kubelet.yaml"}}, nil, nil)
	pc := s.podConfig()
	if got := pc.GetLinux().GetSecurityContext().GetNamespaceOptions().GetNetwork(); got != runtimeapi.NamespaceMode_NODE {
		t.Errorf("network namespace mode %v, want NODE", got)
	}
	var ports []string
	for _, p := range pc.GetPortMappings() {
		ports = append(ports, p.GetProtocol().String()+" "+p.GetHostIp()+":"+itoa(p.GetHostPort())+"->"+itoa(p.GetContainerPort()))
	}
	if want := []string{"TCP 10.99.0.7:10250->10250", "TCP 10.99.0.7:10255->10255"}; !slices.Equal(ports, want) {
		t.Errorf("port mappings %q, want %q", ports, want)
	}
	cc := s.containerConfig()
	script := cc.GetCommand()[2]
	for _, want := range []string{"mount --make-rshared /var/lib/kubelet && ", "ip addr add 10.99.0.7/32 dev lo && ip route del local 10.99.0.7 dev lo table local && sysctl -w net.ipv4.conf.all.accept_local=1 && exec /usr/bin/kubelet"} {
		if !strings.Contains(script, want) {
			t.Errorf("kubelet's command %q lacks %q", script, want)
		}
	}
	args := cc.GetArgs()
	for _, want := range []string{"--config=/k/kubelet.yaml", "--address=0.0.0.0", "--node-ip=10.99.0.7"} {
		if !slices.Contains(args, want) {
			t.Errorf("kubelet's args %q lack %q", args, want)
		}
	}

	// --node-ip given: not added again. IPv6: a /128, kubelet on ::.
	s = New(Config{Image: "node", NodeIP: "fd00::7", KubeletArgs: []string{"--node-ip", "fd00::7"}}, nil, nil)
	cc = s.containerConfig()
	if n := strings.Count(strings.Join(cc.GetArgs(), " "), "node-ip"); n != 1 {
		t.Errorf("kubelet's args %q: --node-ip %d times, want once", cc.GetArgs(), n)
	}
	if !slices.Contains(cc.GetArgs(), "--address=::") || !strings.Contains(cc.GetCommand()[2], "ip addr add fd00::7/128 dev lo") {
		t.Errorf("IPv6 node IP: command %q, args %q", cc.GetCommand()[2], cc.GetArgs())
	}

	// No node IP: nothing of it; the ports forwarded on every address.
	s = New(Config{Image: "node", Ports: []int{10250}}, nil, nil)
	cc = s.containerConfig()
	if strings.Contains(cc.GetCommand()[2], "ip ") || slices.ContainsFunc(cc.GetArgs(), func(a string) bool { return strings.HasPrefix(a, "--address") || strings.HasPrefix(a, "--node-ip") }) {
		t.Errorf("no node IP: command %q, args %q", cc.GetCommand()[2], cc.GetArgs())
	}
	if pm := s.podConfig().GetPortMappings(); len(pm) != 1 || pm[0].GetHostIp() != "" {
		t.Errorf("no node IP: port mappings %v, want 10250 on every address", pm)
	}
}

func itoa(i int32) string { return strconv.Itoa(int(i)) }

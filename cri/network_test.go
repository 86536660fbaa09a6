package cri

import (
	"slices"
	"testing"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/macvz/macvz/runtime/agentapi"
	"github.com/macvz/macvz/runtime/store"
	"github.com/macvz/macvz/runtime/vm"
)

func TestGuestIPs(t *testing.T) {
	ifs := []*agentapi.NetInterface{
		{Name: "lo", Addresses: []string{"127.0.0.1/8", "::1/128"}},
		{Name: "en0", Mac: "02:aa:bb:cc:dd:ee", Addresses: []string{"fe80::1/64", "fd00::5/64", "192.168.64.5/24"}},
		{Name: "en1", Mac: "02:00:00:00:00:01", Addresses: []string{"10.0.0.9/8"}},
	}
	if got := guestIPs(ifs, "02:AA:BB:CC:DD:EE"); !slices.Equal(got, []string{"192.168.64.5", "fd00::5"}) {
		t.Errorf("got %v", got)
	}
	if got := guestIPs(ifs, "02:99:99:99:99:99"); got != nil {
		t.Errorf("unknown MAC: %v", got)
	}
	if got := guestIPs(ifs, "not a mac"); got != nil {
		t.Errorf("bad MAC: %v", got)
	}
}

func TestNeedsIPs(t *testing.T) {
	vmnet := &store.Network{NIC: vm.NIC{Kind: vm.NICVmnetNAT, MAC: "02:aa:bb:cc:dd:ee"}}
	ready := store.Sandbox{State: store.SandboxReady, VMStarted: true, Network: vmnet}
	if !needsIPs(ready) {
		t.Error("a booted vmnet sandbox without IPs needs them")
	}
	for name, sb := range map[string]store.Sandbox{
		"known":        {State: store.SandboxReady, VMStarted: true, Network: vmnet, IPs: []string{"192.168.64.5"}},
		"not booted":   {State: store.SandboxReady, Network: vmnet},
		"stopped":      {State: store.SandboxNotReady, VMStarted: true, Network: vmnet},
		"no network":   {State: store.SandboxReady, VMStarted: true},
		"static (tap)": {State: store.SandboxReady, VMStarted: true, Network: &store.Network{Addresses: []string{"10.88.0.2/16"}}},
	} {
		if needsIPs(sb) {
			t.Errorf("%s: needsIPs", name)
		}
	}
}

func TestPortMappings(t *testing.T) {
	cfg := &runtimeapi.PodSandboxConfig{PortMappings: []*runtimeapi.PortMapping{
		{HostPort: 8080, ContainerPort: 80},
		{HostPort: 5353, ContainerPort: 53, Protocol: runtimeapi.Protocol_UDP, HostIp: "127.0.0.1"},
		{ContainerPort: 9090}, // no hostPort: nothing to map
	}}
	got := portMappings(cfg)
	if len(got) != 2 || got[0].Protocol != "tcp" || got[0].HostPort != 8080 || got[1].Protocol != "udp" || got[1].HostIP != "127.0.0.1" {
		t.Errorf("got %+v", got)
	}
}

func TestHostNetwork(t *testing.T) {
	node := &runtimeapi.PodSandboxConfig{Linux: &runtimeapi.LinuxPodSandboxConfig{SecurityContext: &runtimeapi.LinuxSandboxSecurityContext{
		NamespaceOptions: &runtimeapi.NamespaceOption{Network: runtimeapi.NamespaceMode_NODE}}}}
	if !hostNetwork(node) || hostNetwork(&runtimeapi.PodSandboxConfig{}) {
		t.Error("hostNetwork")
	}
}

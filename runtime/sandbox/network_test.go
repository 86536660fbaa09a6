package sandbox

import (
	"reflect"
	"slices"
	"strings"
	"testing"

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
	got := portMappings([]store.Port{
		{Protocol: "tcp", HostPort: 8080, ContainerPort: 80},
		{Protocol: "udp", HostPort: 5353, ContainerPort: 53, HostIP: "127.0.0.1"},
		{Protocol: "tcp", ContainerPort: 9090}, // no hostPort: nothing to map
	})
	if len(got) != 2 || got[0].Protocol != "tcp" || got[0].HostPort != 8080 || got[1].Protocol != "udp" || got[1].HostIP != "127.0.0.1" {
		t.Errorf("got %+v", got)
	}
}

// A host-network pod's ports reach the guest through the NAT: its
// hostPort, or its container port where none is set; sctp is not.
func TestHostNetworkForwards(t *testing.T) {
	if hostNetworkNIC() != vm.NICUser {
		t.Skip("vz: the daemon proxies host-network ports")
	}
	got := hostNetworkForwards([]store.Port{
		{Protocol: "tcp", ContainerPort: 80},
		{Protocol: "udp", HostPort: 5353, ContainerPort: 53, HostIP: "127.0.0.1"},
		{Protocol: "sctp", HostPort: 9, ContainerPort: 9},
	})
	want := []vm.Forward{{Protocol: "tcp", HostPort: 80, GuestPort: 80}, {Protocol: "udp", HostIP: "127.0.0.1", HostPort: 5353, GuestPort: 53}}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("got %+v, want %+v", got, want)
	}
}

func TestGuestIPsKeepsOnePerFamily(t *testing.T) {
	mac := "52:54:00:12:34:56"
	ifs := []*agentapi.NetInterface{{Mac: mac, Addresses: []string{"10.0.0.2/24", "10.0.0.3/24", "fd00::2/64", "fd00::3/64", "127.0.0.1/8", "bogus"}}}
	if got := strings.Join(guestIPs(ifs, mac), ","); got != "10.0.0.2,fd00::2" {
		t.Fatalf("guestIPs = %s", got)
	}
}

package sandbox

import (
	"errors"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/macvz/macvz/runtime/store"
	"github.com/macvz/macvz/runtime/vm"
)

// Fixtures: vmnet's shared network 192.168.64.0/24 (gateway .1, the
// host), our VM's MAC leased .5, another VM's .6.
const (
	ourMAC   = "02:aa:bb:cc:dd:01"
	otherMAC = "02:aa:bb:cc:dd:02"
)

const leasesFixture = `{
	name=ours
	ip_address=192.168.64.5
	hw_address=1,2:aa:bb:cc:dd:1
	identifier=1,2:aa:bb:cc:dd:1
	lease=0x66f2b1c3
}
{
	name=other
	ip_address=192.168.64.6
	hw_address=1,2:aa:bb:cc:dd:2
	identifier=1,2:aa:bb:cc:dd:2
	lease=0x66f2b1c3
}
`

func TestPodIPFor(t *testing.T) {
	_, shared, _ := net.ParseCIDR("192.168.64.0/24")
	_, lan, _ := net.ParseCIDR("192.168.1.0/24")
	gw := net.ParseIP("192.168.64.1")
	lease := net.ParseIP("192.168.64.5")
	noLease := errors.New("no DHCP lease for that MAC " + ourMAC)
	taken := func(ip net.IP) (string, bool) {
		switch ip.String() {
		case "192.168.64.7":
			return "the pod IP of sandbox other", true
		case "192.168.1.2":
			return "an address of this host", true
		}
		return "", false
	}
	nat := func(reported []string, lease net.IP) ipFacts {
		f := ipFacts{kind: vm.NICVmnetNAT, mac: ourMAC, subnet: shared, gateway: gw, reported: reported, lease: lease, taken: taken}
		if lease == nil {
			f.leaseErr = noLease
		}
		return f
	}
	for _, tc := range []struct {
		name string
		f    ipFacts
		want []string
		note string // a part of the note ("" = none)
		err  string // a part of the error ("" = none)
	}{
		{"guest confirms its lease", nat([]string{"192.168.64.5"}, lease), []string{"192.168.64.5"}, "", ""},
		{"guest reports nothing yet", nat(nil, lease), []string{"192.168.64.5"}, "", ""},
		{"outside the subnet", nat([]string{"10.0.0.9"}, lease), []string{"192.168.64.5"}, "10.0.0.9 (outside the network's subnet 192.168.64.0/24)", ""},
		{"the node's vmnet address (gateway)", nat([]string{"192.168.64.1"}, lease), []string{"192.168.64.5"}, "gateway", ""},
		{"another MAC's lease", nat([]string{"192.168.64.6"}, lease), []string{"192.168.64.5"}, "192.168.64.6 (not its DHCP lease)", ""},
		{"broadcast", nat([]string{"192.168.64.255"}, lease), []string{"192.168.64.5"}, "broadcast", ""},
		{"IPv6 is not leased", nat([]string{"192.168.64.5", "fd00::5"}, lease), []string{"192.168.64.5"}, "fd00::5", ""},
		{"no lease: the guest's claim is not enough", nat([]string{"192.168.64.5"}, nil), nil, "", "no DHCP lease confirms it"},
		{"no lease, gateway claimed", nat([]string{"192.168.64.1"}, nil), nil, "", "gateway"},
		{"lease outside the subnet", nat(nil, net.ParseIP("10.0.0.5")), nil, "", "its DHCP lease 10.0.0.5 is refused (outside"},
		{"lease is another running pod's", nat([]string{"192.168.64.7"}, net.ParseIP("192.168.64.7")), nil, "", "the pod IP of sandbox other"},
		{"socket_vmnet", ipFacts{kind: vm.NICSocket, mac: ourMAC, subnet: shared, gateway: gw, reported: []string{"192.168.64.6"}, lease: lease}, []string{"192.168.64.5"}, "not its DHCP lease", ""},
		{"bridged, no subnet: the guest's address", ipFacts{kind: vm.NICVmnetBridged, mac: ourMAC, reported: []string{"192.168.1.20"}, leaseErr: noLease, taken: taken}, []string{"192.168.1.20"}, "", ""},
		{"bridged: the host's address", ipFacts{kind: vm.NICVmnetBridged, mac: ourMAC, reported: []string{"192.168.1.2"}, leaseErr: noLease, taken: taken}, nil, "", "an address of this host"},
		{"bridged with a subnet: outside it", ipFacts{kind: vm.NICVmnetBridged, mac: ourMAC, subnet: lan, gateway: net.ParseIP("192.168.1.1"), reported: []string{"10.1.1.1", "192.168.1.1"}, leaseErr: noLease, taken: taken}, nil, "", "outside the network's subnet 192.168.1.0/24"},
		{"socket_vmnet bridged (lan): the guest's address in the LAN's subnet", ipFacts{kind: vm.NICSocket, lan: true, mac: ourMAC, subnet: lan, gateway: net.ParseIP("192.168.1.1"), reported: []string{"192.168.1.31"}, leaseErr: noLease, taken: taken}, []string{"192.168.1.31"}, "", ""},
		{"socket_vmnet bridged (lan): outside the LAN's subnet", ipFacts{kind: vm.NICSocket, lan: true, mac: ourMAC, subnet: lan, gateway: net.ParseIP("192.168.1.1"), reported: []string{"192.168.105.9"}, leaseErr: noLease, taken: taken}, nil, "", "outside the network's subnet 192.168.1.0/24"},
		{"socket_vmnet shared: no lease, the guest's claim is not enough", ipFacts{kind: vm.NICSocket, mac: ourMAC, subnet: shared, gateway: gw, reported: []string{"192.168.64.9"}, leaseErr: noLease, taken: taken}, nil, "", "no DHCP lease confirms it"},
		{"bridged with a subnet: inside it", ipFacts{kind: vm.NICVmnetBridged, mac: ourMAC, subnet: lan, gateway: net.ParseIP("192.168.1.1"), reported: []string{"10.1.1.1", "192.168.1.30"}, leaseErr: noLease, taken: taken}, []string{"192.168.1.30"}, "10.1.1.1", ""},
	} {
		ips, note, err := podIPFor(tc.f)
		if !slices.Equal(ips, tc.want) {
			t.Errorf("%s: ips %v, want %v (err %v)", tc.name, ips, tc.want, err)
		}
		if (tc.note == "") != (note == "") || !strings.Contains(note, tc.note) {
			t.Errorf("%s: note %q, want one with %q", tc.name, note, tc.note)
		}
		if tc.err == "" && err != nil || tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)) {
			t.Errorf("%s: err %v, want one with %q", tc.name, err, tc.err)
		}
	}
}

func TestSubnetOf(t *testing.T) {
	for _, tc := range []struct {
		n          store.Network
		subnet, gw string
	}{
		{store.Network{NIC: vm.NIC{Kind: vm.NICVmnetNAT}}, "192.168.64.0/24", "192.168.64.1"}, // recorded before subnets were
		{store.Network{NIC: vm.NIC{Kind: vm.NICSocket}}, "192.168.105.0/24", "192.168.105.1"},
		{store.Network{NIC: vm.NIC{Kind: vm.NICVmnetNAT}, Subnet: "10.5.0.0/16", Gateway: "10.5.255.254"}, "10.5.0.0/16", "10.5.255.254"},
		{store.Network{NIC: vm.NIC{Kind: vm.NICVmnetBridged}}, "<nil>", "<nil>"},
	} {
		n, gw := subnetOf(&tc.n)
		if n.String() != tc.subnet || gw.String() != tc.gw {
			t.Errorf("%+v: %v %v; want %s %s", tc.n, n, gw, tc.subnet, tc.gw)
		}
	}
}

// TestLearnedIPs: the daemon's lookups (lease file, other sandboxes)
// around podIPFor.
func TestLearnedIPs(t *testing.T) {
	s := newTestController(t)
	path := filepath.Join(t.TempDir(), "dhcpd_leases")
	if err := os.WriteFile(path, []byte(leasesFixture), 0o644); err != nil {
		t.Fatal(err)
	}
	old := dhcpLeasesPath
	dhcpLeasesPath = path
	t.Cleanup(func() { dhcpLeasesPath = old })

	other := store.Sandbox{ID: "other", Name: "o", State: store.SandboxReady, IPs: []string{"192.168.64.6"},
		Network: &store.Network{NIC: vm.NIC{Kind: vm.NICVmnetNAT, MAC: otherMAC}}}
	if err := s.st.CreateSandbox(&other); err != nil {
		t.Fatal(err)
	}
	ours := store.Sandbox{ID: "ours", Network: &store.Network{NIC: vm.NIC{Kind: vm.NICVmnetNAT, MAC: ourMAC}, Subnet: "192.168.64.0/24", Gateway: "192.168.64.1"}}
	for _, claim := range [][]string{{"192.168.64.6"}, {"192.168.64.1"}, {"172.16.0.1"}, nil} {
		ips, _, err := s.learnedIPs(ours, claim)
		if err != nil || !slices.Equal(ips, []string{"192.168.64.5"}) {
			t.Errorf("guest claims %v: %v, %v; want the lease 192.168.64.5", claim, ips, err)
		}
	}
	// A VM without a lease gets no pod IP, whatever it claims.
	unleased := store.Sandbox{ID: "new", Network: &store.Network{NIC: vm.NIC{Kind: vm.NICVmnetNAT, MAC: "02:aa:bb:cc:dd:03"}}}
	if ips, _, err := s.learnedIPs(unleased, []string{"192.168.64.9"}); err == nil || ips != nil {
		t.Errorf("no lease: %v, %v; want an error", ips, err)
	}
	// The other pod's own lease, once that pod has it, is not ours to take.
	stolen := store.Sandbox{ID: "thief", Network: &store.Network{NIC: vm.NIC{Kind: vm.NICVmnetNAT, MAC: otherMAC}}}
	if ips, _, err := s.learnedIPs(stolen, nil); err == nil || !strings.Contains(err.Error(), "sandbox other") {
		t.Errorf("a lease another running pod holds: %v, %v", ips, err)
	}
}

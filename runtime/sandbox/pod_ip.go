package sandbox

import (
	"fmt"
	"net"
	"strings"

	"github.com/macvz/macvz/netplugin"
	"github.com/macvz/macvz/netplugin/dhcpleases"
	"github.com/macvz/macvz/runtime/store"
	"github.com/macvz/macvz/runtime/vm"
)

// Which address a DHCP-served (vmnet) sandbox gets as its pod IP. The
// guest is the pod author's: what its agent reports is a claim, and the
// root hostPort proxy (netplugin/portproxy) would connect to whatever
// address is recorded, so a guest claiming the node's, the gateway's or
// another pod's address must not get it.
//
//   - vmnet-nat and socket (vmnet's shared network): the host's DHCP
//     server leased the guest its address, recorded by MAC in
//     /var/db/dhcpd_leases. The pod IP is that lease, if it lies in the
//     network's subnet; the guest's report only confirms it (a different
//     claim is logged and ignored). Without such a lease there is no pod
//     IP: the daemon says why and claims nothing.
//   - vmnet-bridged, and socket with "lan" (socket_vmnet's bridged
//     mode): the LAN's DHCP server is not the host's, so there is
//     no lease to compare with. The guest's address is taken when it is
//     inside the network's "subnet" (if configured) and none of the
//     refused addresses below; else a lease, under the same rules.
//
// Never a pod IP: the subnet's gateway, network or broadcast address, an
// address of this host, or another running sandbox's IP.

// ipFacts is what podIPFor decides from.
type ipFacts struct {
	kind     vm.NICKind
	lan      bool // socket_vmnet's bridged mode: no host lease
	mac      string
	subnet   *net.IPNet // nil: unknown (vmnet-bridged without "subnet")
	gateway  net.IP
	reported []string // the guest agent's addresses on the NIC, IPv4 first
	lease    net.IP   // the host DHCP server's lease for mac; nil: none
	leaseErr error    // why there is no lease
	taken    func(net.IP) (string, bool)
}

// subnetOf is a recorded network's guest subnet and gateway; records
// made before they were recorded get their mode's defaults.
func subnetOf(n *store.Network) (*net.IPNet, net.IP) {
	s := n.Subnet
	if s == "" {
		switch n.NIC.Kind {
		case vm.NICVmnetNAT:
			s = netplugin.DefaultGuestSubnet(netplugin.ModeVmnetNAT)
		case vm.NICSocket:
			s = netplugin.DefaultGuestSubnet(netplugin.ModeSocket)
		}
	}
	_, subnet, err := net.ParseCIDR(s)
	if err != nil {
		return nil, nil
	}
	gw := net.ParseIP(n.Gateway)
	if gw == nil && subnet.IP.To4() != nil {
		gw = append(net.IP(nil), subnet.IP.To4()...)
		gw[3]++
	}
	return subnet, gw
}

// leased reports whether a network's addresses come from the host's
// DHCP server (vmnet's shared network), whose leases the daemon reads:
// not socket_vmnet's bridged mode (lan), whose come from the LAN's.
func leased(k vm.NICKind, lan bool) bool {
	return k == vm.NICVmnetNAT || (k == vm.NICSocket && !lan)
}

// refuse says why ip cannot be a pod IP on the network ("" when it can).
func (f *ipFacts) refuse(ip net.IP) string {
	switch {
	case ip == nil:
		return "not an IP address"
	case !ip.IsGlobalUnicast():
		return "not a global unicast address"
	case f.subnet != nil && !f.subnet.Contains(ip):
		return fmt.Sprintf("outside the network's subnet %s", f.subnet)
	case f.gateway != nil && ip.Equal(f.gateway):
		return "the network's gateway (the host)"
	case f.subnet != nil && ip.Equal(f.subnet.IP):
		return "the subnet's network address"
	case f.subnet != nil && isBroadcast(ip, f.subnet):
		return "the subnet's broadcast address"
	}
	if f.taken != nil {
		if who, ok := f.taken(ip); ok {
			return who
		}
	}
	return ""
}

func isBroadcast(ip net.IP, n *net.IPNet) bool {
	ip4, base := ip.To4(), n.IP.To4()
	if ip4 == nil || base == nil || len(n.Mask) != net.IPv4len {
		return false
	}
	for i := range ip4 {
		if ip4[i] != base[i]|^n.Mask[i] {
			return false
		}
	}
	return true
}

// podIPFor decides a DHCP-served sandbox's pod IPs. note is worth a
// warning even on success (the guest claimed something else); err says
// why there is no pod IP yet.
func podIPFor(f ipFacts) (ips []string, note string, err error) {
	var refused []string
	var accepted []string
	for _, s := range f.reported {
		ip := net.ParseIP(s)
		if why := f.refuse(ip); why != "" {
			refused = append(refused, fmt.Sprintf("%s (%s)", s, why))
			continue
		}
		accepted = append(accepted, ip.String())
	}
	var leaseWhy string
	lease := f.lease
	if lease != nil {
		if leaseWhy = f.refuse(lease); leaseWhy != "" {
			lease = nil
		}
	}

	if !leased(f.kind, f.lan) {
		if len(accepted) > 0 {
			if len(refused) > 0 {
				note = "the guest also claims " + strings.Join(refused, ", ") + "; not used"
			}
			return accepted, note, nil
		}
		if lease != nil {
			if len(refused) > 0 {
				note = "the guest claims " + strings.Join(refused, ", ") + "; using its DHCP lease " + lease.String()
			}
			return []string{lease.String()}, note, nil
		}
		return nil, "", noPodIP(f, refused, leaseWhy)
	}

	// The host's DHCP server decides; the guest only confirms.
	if lease == nil {
		return nil, "", noPodIP(f, append(refused, unconfirmed(accepted)...), leaseWhy)
	}
	var other []string
	for _, a := range accepted {
		if a != lease.String() {
			other = append(other, a+" (not its DHCP lease)")
		}
	}
	other = append(refused, other...)
	if len(other) > 0 {
		note = "the guest claims " + strings.Join(other, ", ") + "; using its DHCP lease " + lease.String()
	}
	return []string{lease.String()}, note, nil
}

func unconfirmed(as []string) []string {
	out := make([]string, 0, len(as))
	for _, a := range as {
		out = append(out, a+" (no DHCP lease confirms it)")
	}
	return out
}

// noPodIP explains why a sandbox has no pod IP.
func noPodIP(f ipFacts, refused []string, leaseWhy string) error {
	var b strings.Builder
	fmt.Fprintf(&b, "no usable address for the guest's interface %s", f.mac)
	if f.subnet != nil {
		fmt.Fprintf(&b, " in %s", f.subnet)
	}
	switch {
	case f.lease != nil && leaseWhy != "":
		fmt.Fprintf(&b, ": its DHCP lease %s is refused (%s)", f.lease, leaseWhy)
	case f.leaseErr != nil:
		fmt.Fprintf(&b, ": %v", f.leaseErr)
	default:
		b.WriteString(": no DHCP lease")
	}
	if len(refused) > 0 {
		fmt.Fprintf(&b, "; the guest reports %s", strings.Join(refused, ", "))
	}
	if f.subnet != nil {
		b.WriteString(" (set the network's \"subnet\" in the macvz-net configuration if the DHCP server uses another)")
	}
	return fmt.Errorf("%s", b.String())
}

// dhcpLeasesPath is the host DHCP server's lease file ("" = macOS's).
var dhcpLeasesPath = ""

// learnedIPs decides a sandbox's pod IPs from what its guest reports.
// Networks whose addresses come by DHCP (vmnet, socket) go through
// podIPFor; others (none today: IPAM fills bridge-tap's addresses at
// RunPodSandbox) take the report.
func (s *Controller) learnedIPs(sb store.Sandbox, reported []string) ([]string, string, error) {
	n := sb.Network
	switch n.NIC.Kind {
	case vm.NICVmnetNAT, vm.NICSocket, vm.NICVmnetBridged:
	default:
		if len(reported) == 0 {
			return nil, "", fmt.Errorf("the guest reports no address on its interface %s", n.NIC.MAC)
		}
		return reported, "", nil
	}
	f := ipFacts{kind: n.NIC.Kind, lan: n.LAN, mac: n.NIC.MAC, reported: reported, taken: s.addressTaken(sb.ID)}
	f.subnet, f.gateway = subnetOf(n)
	mac, err := net.ParseMAC(n.NIC.MAC)
	if err == nil {
		f.lease, f.leaseErr = dhcpleases.LookupIP(dhcpLeasesPath, mac)
	} else {
		f.leaseErr = err
	}
	return podIPFor(f)
}

// addressTaken reports whether an address belongs to this host or to a
// running sandbox other than self, and whose it is.
func (s *Controller) addressTaken(self string) func(net.IP) (string, bool) {
	var local []net.IP
	if addrs, err := net.InterfaceAddrs(); err == nil {
		for _, a := range addrs {
			if ipn, ok := a.(*net.IPNet); ok {
				local = append(local, ipn.IP)
			}
		}
	}
	return func(ip net.IP) (string, bool) {
		for _, l := range local {
			if l.Equal(ip) {
				return "an address of this host", true
			}
		}
		others, _ := s.st.Sandboxes(func(o *store.Sandbox) bool {
			return o.ID != self && o.State == store.SandboxReady && len(o.IPs) > 0
		})
		for _, o := range others {
			for _, a := range o.IPs {
				if net.ParseIP(a).Equal(ip) {
					return "the pod IP of sandbox " + o.ID, true
				}
			}
		}
		return "", false
	}
}

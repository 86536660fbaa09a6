//go:build linux

package netplugin

import (
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/plugins/pkg/netlinksafe"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Connection tracking keeps NAT decisions per flow: a UDP client that
// kept sending to a hostPort while its old pod went away would keep going
// to the old pod's address, and a new pod given a released IP would
// inherit the old one's flows. Both are flushed, best effort (a kernel
// without conntrack netlink has nothing to flush).

var families = []netlink.InetFamily{unix.AF_INET, unix.AF_INET6}

// flushUDPHostPorts drops the UDP flows to the new hostPorts (ADD).
func flushUDPHostPorts(ports []PortMapping) {
	var filters []netlink.CustomConntrackFilter
	for _, pm := range ports {
		if pm.Protocol != "udp" {
			continue
		}
		f := &netlink.ConntrackFilter{}
		if f.AddProtocol(unix.IPPROTO_UDP) == nil && f.AddPort(netlink.ConntrackOrigDstPort, uint16(pm.HostPort)) == nil {
			filters = append(filters, f)
		}
	}
	flush(filters)
}

// flushPodIPs drops every flow from or to the pod's addresses in
// prevResult (DEL).
func flushPodIPs(prev types.Result) {
	if prev == nil {
		return
	}
	res, err := current.NewResultFromResult(prev)
	if err != nil {
		return
	}
	var filters []netlink.CustomConntrackFilter
	for _, ipc := range res.IPs {
		for _, tp := range []netlink.ConntrackFilterType{netlink.ConntrackOrigSrcIP, netlink.ConntrackReplySrcIP} {
			f := &netlink.ConntrackFilter{}
			if f.AddIP(tp, ipc.Address.IP) == nil {
				filters = append(filters, f)
			}
		}
	}
	flush(filters)
}

func flush(filters []netlink.CustomConntrackFilter) {
	if len(filters) == 0 {
		return
	}
	for _, fam := range families {
		_, _ = netlinksafe.ConntrackDeleteFilters(netlink.ConntrackTable, fam, filters...)
	}
}

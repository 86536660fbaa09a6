package nodevm

import (
	"net/netip"
	"os"
	"strings"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// HostResolvConfs are where the host's resolvers are read for the node
// VM on the pod network: the system's file, then systemd-resolved's list
// of its upstream servers (the system's file names only its stub,
// 127.0.0.53).
var HostResolvConfs = []string{"/etc/resolv.conf", "/run/systemd/resolve/resolv.conf"}

// HostDNS is the first of files with a nameserver a VM can reach (not a
// loopback address, which in the VM would be its own, nor a link-local
// one of a host interface), as the node VM's resolv.conf on the pod
// network (Config.DNS): kubelet there gives pods of dnsPolicy Default
// the node's resolvers, as it would on the host. nil if none: the CNI
// result's DNS then.
func HostDNS(files ...string) *runtimeapi.DNSConfig {
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		d := &runtimeapi.DNSConfig{}
		for _, line := range strings.Split(string(b), "\n") {
			fs := strings.Fields(line)
			if len(fs) < 2 {
				continue
			}
			switch fs[0] {
			case "nameserver":
				ip, err := netip.ParseAddr(fs[1])
				if err == nil && !ip.IsLoopback() && !ip.IsUnspecified() && !ip.IsLinkLocalUnicast() {
					d.Servers = append(d.Servers, ip.String())
				}
			case "search":
				d.Searches = fs[1:]
			case "options":
				d.Options = fs[1:]
			}
		}
		if len(d.Servers) > 0 {
			return d
		}
	}
	return nil
}

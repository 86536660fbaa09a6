package sandbox

import (
	"context"
	"net"
	"time"

	"github.com/macvz/macvz/internal/guard"
	"github.com/macvz/macvz/netplugin/portproxy"
	"github.com/macvz/macvz/runtime/agentapi"
	"github.com/macvz/macvz/runtime/store"
)

// On the bridge-tap network the pod IP comes from IPAM at RunPodSandbox.
// On vmnet (macOS) the guest gets its address by DHCP once it boots, so
// the daemon learns it: vmnet's DHCP lease for the NIC's MAC, which the
// guest agent's interface list may confirm but never overrides (pod_ip.go
// says which claims are believed). PodSandboxStatus reports it as
// soon as it is known. Where the network does not map hostPorts itself
// (vmnet), the daemon proxies them to that IP (netplugin/portproxy) until
// StopPodSandbox.

// ipLearnTimeout bounds the background wait for a DHCP address.
const ipLearnTimeout = 2 * time.Minute

// guestIPs are the global unicast addresses of the guest interface with
// the given MAC: its first IPv4 and first IPv6 one (a pod has at most one
// of each family). The list comes from the guest, so it is only read,
// and only that much of it is kept.
func guestIPs(ifs []*agentapi.NetInterface, mac string) []string {
	want, err := net.ParseMAC(mac)
	if err != nil {
		return nil
	}
	var v4, v6 []string
	for _, ifc := range ifs {
		got, err := net.ParseMAC(ifc.GetMac())
		if err != nil || got.String() != want.String() {
			continue
		}
		for _, a := range ifc.GetAddresses() {
			ip, _, err := net.ParseCIDR(a)
			if err != nil || !ip.IsGlobalUnicast() {
				continue
			}
			if ip.To4() != nil {
				v4 = append(v4, ip.String())
			} else {
				v6 = append(v6, ip.String())
			}
		}
	}
	return append(v4[:min(len(v4), 1)], v6[:min(len(v6), 1)]...)
}

// needsIPs reports whether a sandbox's IPs are to be learned.
func needsIPs(sb store.Sandbox) bool {
	return sb.Network != nil && len(sb.IPs) == 0 && len(sb.Network.Addresses) == 0 &&
		sb.VMStarted && sb.State == store.SandboxReady
}

// learnIPs asks the guest and the DHCP leases for a sandbox's IPs and
// decides which to believe (pod_ip.go). On success it records them and
// starts the daemon's hostPort proxies; the error says why there is no
// pod IP yet.
func (s *Controller) learnIPs(ctx context.Context, sb store.Sandbox) (store.Sandbox, error) {
	if !needsIPs(sb) {
		return sb, nil
	}
	var reported []string
	if c, err := s.Shim(ctx, sb); err == nil {
		if info, err := c.Agent().Info(ctx, &agentapi.InfoRequest{}); err == nil {
			reported = guestIPs(info.GetInterfaces(), sb.Network.NIC.MAC)
		}
	}
	ips, note, err := s.learnedIPs(sb, reported)
	if err != nil {
		return sb, err
	}
	rec, err := s.st.UpdateSandbox(sb.ID, func(r *store.Sandbox) error {
		if len(r.IPs) > 0 {
			return errNoChange
		}
		r.IPs = ips
		return nil
	})
	if err != nil {
		return sb, nil
	}
	if note != "" {
		sbLog(sb.ID).Warn("guest address claims refused", "detail", note)
	}
	sbLog(sb.ID).Info("pod IP learned", "ips", ips)
	s.startPorts(rec)
	s.addressed(sb.ID)
	return rec, nil
}

// watchIPs learns a sandbox's IPs in the background after its VM booted,
// until they are known, the sandbox stops, or ipLearnTimeout.
func (s *Controller) watchIPs(id string) {
	ctx, cancel := context.WithTimeout(context.Background(), ipLearnTimeout)
	defer cancel()
	for {
		sb, err := s.st.Sandbox(id)
		if err != nil || !needsIPs(sb) {
			return
		}
		var why error
		if sb, why = s.learnIPs(ctx, sb); !needsIPs(sb) {
			return
		}
		select {
		case <-ctx.Done():
			sbLog(id).Error("the sandbox has no pod IP", "waited", ipLearnTimeout, "mac", sb.Network.NIC.MAC, "err", why)
			return
		case <-time.After(500 * time.Millisecond):
		}
	}
}

// afterBoot settles a booted sandbox's addresses: it starts the hostPort
// proxies, or the watch for a DHCP address first.
func (s *Controller) afterBoot(sb store.Sandbox) {
	if needsIPs(sb) {
		guard.Go(sbLog(sb.ID), "pod IP watch", func() { s.watchIPs(sb.ID) })
		return
	}
	s.startPorts(sb)
}

// startPorts starts the daemon's proxies for a sandbox's hostPorts when
// its network leaves them to the daemon.
func (s *Controller) startPorts(sb store.Sandbox) {
	if sb.Network == nil || !sb.Network.PortsByDaemon || len(sb.IPs) == 0 {
		return
	}
	var ms []portproxy.Mapping
	for _, p := range portMappings(store.SpecOf(sb).Ports) {
		if p.Protocol == "sctp" {
			continue
		}
		ms = append(ms, portproxy.Mapping{Protocol: p.Protocol, HostIP: p.HostIP, HostPort: int(p.HostPort), ContainerPort: int(p.ContainerPort)})
	}
	if len(ms) == 0 {
		return
	}
	ip := net.ParseIP(sb.IPs[0])
	if err := s.ports.Start(sb.ID, ip, ms); err != nil {
		sbLog(sb.ID).Warn("hostPort proxies", "err", err)
		return
	}
	sbLog(sb.ID).Info("hostPorts proxied to the guest", "ip", ip, "ports", len(ms))
}

// PodIPs returns the sandbox's record with its pod IPs, learning them
// first when still unknown (vmnet: DHCP).
func (s *Controller) PodIPs(ctx context.Context, sb store.Sandbox) store.Sandbox {
	if needsIPs(sb) {
		sb, _ = s.learnIPs(ctx, sb)
	}
	return sb
}

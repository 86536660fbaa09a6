package sandbox

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"runtime"

	"github.com/containerd/errdefs"

	"github.com/macvz/macvz/netplugin"
	"github.com/macvz/macvz/netplugin/cnimgr"
	"github.com/macvz/macvz/runtime/agentapi"
	"github.com/macvz/macvz/runtime/store"
	"github.com/macvz/macvz/runtime/vm"
)

// A pod's network is its VM's one NIC. A pod on the pod network gets it
// from the CNI configuration (cnimgr runs macvz-net and any chained
// plugins at RunPodSandbox); the VM boots with the NIC the result names
// and the agent configures the guest from it, so the pod IP is known when
// RunPodSandbox returns. A host-network pod has no CNI attachment: a VM
// cannot share the host's network stack, so it gets the hypervisor's own
// NAT (QEMU user-mode networking, vz's NAT attachment) — outbound access
// and nothing to set up or tear down on the host.

// User-mode networking's fixed addressing (QEMU's slirp defaults).
const (
	userNetGuest   = "10.0.2.15/24"
	userNetGateway = "10.0.2.2"
	userNetDNS     = "10.0.2.3"
)

// NetworkStatus is nil when the pod network is usable, else why not.
func (s *Controller) NetworkStatus(ctx context.Context) *cnimgr.StatusError {
	err := s.net.Status(ctx)
	if err == nil {
		return nil
	}
	var se *cnimgr.StatusError
	if errors.As(err, &se) {
		return se
	}
	return &cnimgr.StatusError{Reason: cnimgr.ReasonPluginNotReady, Message: err.Error(), Err: err}
}

// NetworkSummary says which network pods join and in which mode (""
// when none is configured).
func (s *Controller) NetworkSummary() string {
	if s.net == nil {
		return ""
	}
	sum, err := s.net.Summary()
	if err != nil {
		return ""
	}
	return sum
}

// setupNetwork attaches a new sandbox: a CNI ADD for a pod-network pod,
// a user-mode NIC for a host-network pod. It records the attachment in
// the sandbox before returning; on failure nothing is left.
func (s *Controller) setupNetwork(ctx context.Context, sb *store.Sandbox) error {
	spec := store.SpecOf(*sb)
	if spec.HostNetwork {
		n := &store.Network{
			NIC:       vm.NIC{Kind: hostNetworkNIC(), MAC: netplugin.GuestMAC("host-network", sb.ID, "eth0"), Forwards: hostNetworkForwards(spec.Ports)},
			IfName:    "eth0",
			Addresses: []string{userNetGuest},
			Routes:    []store.Route{{GW: userNetGateway}},
			DNS:       store.DNS{Servers: []string{userNetDNS}},
		}
		if n.NIC.Kind != vm.NICUser {
			// vz NAT: the guest gets its address by DHCP, and the NAT
			// forwards no port: the daemon proxies the pod's ports from
			// the host to that address (startPorts), as it does for
			// vmnet pods (the node VM's kubelet port on a Mac so).
			n.Addresses, n.Routes, n.DNS = nil, nil, store.DNS{}
			n.PortsByDaemon = true
		}
		rec, err := s.st.UpdateSandbox(sb.ID, func(r *store.Sandbox) error { r.Network = n; return nil })
		if err == nil {
			*sb = rec
		}
		return err
	}
	if se := s.NetworkStatus(ctx); se != nil {
		return fmt.Errorf("the pod network is not ready (%s: %s); only host-network pods can run: %w", se.Reason, se.Message, errdefs.ErrFailedPrecondition)
	}
	att, err := s.net.Setup(ctx, sb.ID, sb.Dir, portMappings(spec.Ports), cniOptions(sb.ID, spec)...)
	if err != nil {
		return fmt.Errorf("setting up the pod network: %w", err)
	}
	n := networkOf(att)
	rec, err := s.st.UpdateSandbox(sb.ID, func(r *store.Sandbox) error {
		r.Network = n
		r.IPs = att.PodIPs()
		return nil
	})
	if err != nil {
		s.net.Teardown(context.WithoutCancel(ctx), sb.ID, sb.Dir, portMappings(spec.Ports), cniOptions(sb.ID, spec)...)
		return err
	}
	*sb = rec
	sbLog(sb.ID).Info("pod network attached", "ips", rec.IPs, "nic", n.NIC.Kind, "device", n.NIC.Device, "mac", n.NIC.MAC)
	return nil
}

// hostNetworkForwards are a host-network pod's ports, forwarded from the
// node to the guest by the hypervisor's NAT: the node's ports are the
// pod's ports (hostPort defaults to the container port, as Kubernetes
// has it for host-network pods).
func hostNetworkForwards(ports []store.Port) []vm.Forward {
	if hostNetworkNIC() != vm.NICUser {
		return nil // vz: the daemon proxies to the guest's NAT address
	}
	var out []vm.Forward
	for _, p := range ports {
		host := p.HostPort
		if host <= 0 {
			host = p.ContainerPort
		}
		if host <= 0 || p.ContainerPort <= 0 || (p.Protocol != "tcp" && p.Protocol != "udp") {
			continue
		}
		out = append(out, vm.Forward{Protocol: p.Protocol, HostIP: p.HostIP, HostPort: int(host), GuestPort: int(p.ContainerPort)})
	}
	return out
}

// hostNetworkNIC is the hypervisor NAT of this platform's backend.
func hostNetworkNIC() vm.NICKind {
	if runtime.GOOS == "darwin" {
		return vm.NICVmnetNAT
	}
	return vm.NICUser
}

// teardownNetwork detaches a sandbox (CNI DEL, idempotent) and forgets
// the attachment.
func (s *Controller) teardownNetwork(ctx context.Context, sb store.Sandbox) error {
	if sb.Network == nil {
		return nil
	}
	if spec := store.SpecOf(sb); !spec.HostNetwork {
		if err := s.net.Teardown(ctx, sb.ID, sb.Dir, portMappings(spec.Ports), cniOptions(sb.ID, spec)...); err != nil {
			return fmt.Errorf("tearing down the pod network: %w", err)
		}
		sbLog(sb.ID).Info("pod network detached")
	}
	_, err := s.st.UpdateSandbox(sb.ID, func(r *store.Sandbox) error { r.Network = nil; return nil })
	if errdefs.IsNotFound(err) {
		return nil
	}
	return err
}

// networkOf is what the VM and the guest need of a CNI attachment.
func networkOf(a *cnimgr.Attachment) *store.Network {
	n := &store.Network{
		NIC:           a.NIC(),
		IfName:        a.IfName,
		MTU:           a.MTU,
		DNS:           store.DNS{Servers: a.DNS.Servers, Searches: a.DNS.Searches, Options: a.DNS.Options},
		PortsByDaemon: !a.PortMappingsHandled,
		LAN:           a.LAN,
	}
	for _, ip := range a.IPs {
		n.Addresses = append(n.Addresses, ip.Address.String())
	}
	if a.Subnet != nil {
		n.Subnet = a.Subnet.String()
	}
	if a.Gateway != nil {
		n.Gateway = a.Gateway.String()
	}
	for _, r := range a.Routes {
		rt := store.Route{Dst: r.Dst.String()}
		if ones, _ := r.Dst.Mask.Size(); ones == 0 {
			rt.Dst = "" // the default route of its family
		}
		if r.GW != nil {
			rt.GW = r.GW.String()
		}
		n.Routes = append(n.Routes, rt)
	}
	// A default route without a gateway goes through the first
	// address's gateway, as the bridge plugin's result means it.
	for i, r := range n.Routes {
		if r.GW == "" && r.Dst == "" {
			for _, ip := range a.IPs {
				if ip.Gateway != nil {
					n.Routes[i].GW = ip.Gateway.String()
					break
				}
			}
		}
	}
	return n
}

// configureGuestNetwork applies a sandbox's attachment in the guest:
// interface address and name, routes; loopback is always brought up.
func configureGuestNetwork(ctx context.Context, a agentapi.AgentClient, n *store.Network, prevMAC string) error {
	req := &agentapi.ConfigureNetworkRequest{}
	if n != nil && len(n.Addresses) > 0 {
		in := &agentapi.Interface{Mac: n.NIC.MAC, Name: n.IfName, Mtu: uint32(n.MTU), Addresses: n.Addresses}
		if prevMAC != n.NIC.MAC {
			in.PreviousMac = prevMAC
		}
		req.Interfaces = []*agentapi.Interface{in}
		for _, r := range n.Routes {
			req.Routes = append(req.Routes, &agentapi.Route{Destination: r.Dst, Gateway: r.GW, Device: n.IfName})
		}
	}
	if _, err := a.ConfigureNetwork(ctx, req); err != nil {
		return fmt.Errorf("configuring the guest's network: %w", err)
	}
	return nil
}

// portMappings are the pod's hostPorts as the portMappings capability.
func portMappings(ports []store.Port) []cnimgr.PortMapping {
	var out []cnimgr.PortMapping
	for _, p := range ports {
		if p.HostPort <= 0 {
			continue
		}
		out = append(out, cnimgr.PortMapping{HostPort: p.HostPort, ContainerPort: p.ContainerPort, Protocol: p.Protocol, HostIP: p.HostIP})
	}
	return out
}

// cniOptions are the DNS capability and the Kubernetes CNI_ARGS.
func cniOptions(id string, spec store.SandboxSpec) []cnimgr.Option {
	opts := []cnimgr.Option{cnimgr.WithArgs(
		[2]string{"K8S_POD_NAMESPACE", spec.Namespace},
		[2]string{"K8S_POD_NAME", spec.Name},
		[2]string{"K8S_POD_INFRA_CONTAINER_ID", id},
		[2]string{"K8S_POD_UID", spec.UID},
	)}
	if d := spec.DNS; d != nil {
		opts = append(opts, cnimgr.WithDNS(cnimgr.DNS{Servers: d.Servers, Searches: d.Searches, Options: d.Options}))
	}
	return opts
}

// collectNetworks removes attachments nobody owns (a crash between CNI
// ADD and the record, or during a DEL): CNI GC with the live sandboxes.
func (s *Controller) collectNetworks(ctx context.Context) {
	if s.NetworkStatus(ctx) != nil {
		return
	}
	sbs, err := s.st.Sandboxes(func(sb *store.Sandbox) bool { return sb.Network != nil })
	if err != nil {
		slog.Warn("listing sandboxes for network GC", "err", err)
		return
	}
	live := make([]string, 0, len(sbs))
	for _, sb := range sbs {
		live = append(live, sb.ID)
	}
	if err := s.net.GC(ctx, live); err != nil {
		slog.Warn("network garbage collection", "err", err)
	}
}

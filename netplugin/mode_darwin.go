//go:build darwin

package netplugin

import (
	"fmt"
	"net"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
)

// macOS runs the Virtualization.framework attachments. Nothing exists on
// the host per sandbox: the shim creates the attachment when the VM starts,
// from the result's MAC and the mode, so ADD only validates and describes,
// and DEL and GC have nothing to remove. The guest's address comes from a
// DHCP server (vmnet's, the LAN's, or socket_vmnet's): the result has no
// IPs, and the daemon learns the address from the guest agent, falling
// back to /var/db/dhcpd_leases by MAC (package netplugin/dhcpleases).
// hostPorts are the daemon's userspace proxy (package netplugin/portproxy);
// the plugin ignores portMappings here.
var platformModes = map[string]handler{
	ModeVmnetNAT:     vmnetNAT{},
	ModeVmnetBridged: vmnetBridged{},
	ModeSocket:       socketMode{},
}

func darwinResult(args *skel.CmdArgs, c *NetConf, host *current.Interface) *current.Result {
	guest := guestInterface(args, c)
	guest.SocketPath = host.SocketPath
	return &current.Result{
		CNIVersion: current.ImplementedSpecVersion,
		Interfaces: []*current.Interface{host, guest},
		DNS:        c.resultDNS(types.DNS{}),
	}
}

// vmnetNAT: VZNATNetworkDeviceAttachment. Needs no entitlement.
type vmnetNAT struct{}

func (vmnetNAT) add(args *skel.CmdArgs, c *NetConf) (*current.Result, error) {
	return darwinResult(args, c, &current.Interface{Name: HostVmnetNAT}), nil
}
func (vmnetNAT) del(*skel.CmdArgs, *NetConf) error { return nil }
func (vmnetNAT) check(args *skel.CmdArgs, c *NetConf) error {
	_, err := checkGuestMAC(args, c)
	return err
}
func (vmnetNAT) status(*skel.CmdArgs, *NetConf) error { return nil }
func (vmnetNAT) gc(*skel.CmdArgs, *NetConf) error     { return nil }

// vmnetBridged: VZBridgedNetworkDeviceAttachment on the host interface
// c.Interface. Virtualization.framework only lists bridgeable interfaces
// (VZBridgedNetworkInterface.networkInterfaces) to a process signed with
// the restricted com.apple.vm.networking entitlement, which Apple grants
// only to a developer's provisioning profile (`make sign` never adds it:
// an ad-hoc-signed binary claiming it is killed at exec). Bridged pods
// use socket mode on socket_vmnet's bridged socket instead.
type vmnetBridged struct{}

func hostInterfaceUp(name string) error {
	ifc, err := net.InterfaceByName(name)
	if err != nil {
		return fmt.Errorf("host interface %s: %w", name, err)
	}
	if ifc.Flags&net.FlagUp == 0 {
		return fmt.Errorf("host interface %s is down", name)
	}
	return nil
}

func (vmnetBridged) add(args *skel.CmdArgs, c *NetConf) (*current.Result, error) {
	if err := hostInterfaceUp(c.Interface); err != nil {
		return nil, types.NewError(types.ErrTryAgainLater, err.Error(), "")
	}
	return darwinResult(args, c, &current.Interface{Name: c.Interface}), nil
}
func (vmnetBridged) del(*skel.CmdArgs, *NetConf) error { return nil }
func (vmnetBridged) check(args *skel.CmdArgs, c *NetConf) error {
	if _, err := checkGuestMAC(args, c); err != nil {
		return err
	}
	return hostInterfaceUp(c.Interface)
}
func (vmnetBridged) status(_ *skel.CmdArgs, c *NetConf) error {
	if err := hostInterfaceUp(c.Interface); err != nil {
		return notAvailable("%v", err)
	}
	return nil
}
func (vmnetBridged) gc(*skel.CmdArgs, *NetConf) error { return nil }

// socketMode: VZFileHandleNetworkDeviceAttachment relayed by the shim to
// socket_vmnet's unix stream socket c.Socket (runtime/vz/socketvmnet;
// socket_vmnet runs as root and holds the vmnet access, so macvz needs no
// entitlement), in its shared mode (VMs reach each other and the host) or
// its bridged mode (VMs on the LAN). The result carries the path as the
// interfaces' socketPath.
type socketMode struct{}

func (socketMode) add(args *skel.CmdArgs, c *NetConf) (*current.Result, error) {
	if err := socketVmnetStatus(c.Socket); err != nil {
		return nil, types.NewError(types.ErrTryAgainLater, err.Msg, "")
	}
	return darwinResult(args, c, &current.Interface{Name: HostSocket, SocketPath: c.Socket}), nil
}
func (socketMode) del(*skel.CmdArgs, *NetConf) error { return nil }
func (socketMode) check(args *skel.CmdArgs, c *NetConf) error {
	if _, err := checkGuestMAC(args, c); err != nil {
		return err
	}
	if err := socketVmnetStatus(c.Socket); err != nil {
		return err
	}
	return nil
}

// status fails (CNI code 50, with the path and how to start socket_vmnet)
// unless socket_vmnet accepts a connection, so that kubelet and crictl
// see the network not ready.
func (socketMode) status(_ *skel.CmdArgs, c *NetConf) error {
	if err := socketVmnetStatus(c.Socket); err != nil {
		return err
	}
	return nil
}
func (socketMode) gc(*skel.CmdArgs, *NetConf) error { return nil }

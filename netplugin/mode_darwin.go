//go:build darwin

package netplugin

import (
	"fmt"
	"net"
	"os"
	"time"

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
// the com.apple.vm.networking entitlement, which Apple grants on request to
// a developer ID: a daemon without it must use vmnet-nat or socket.
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

// socketMode: VZFileHandleNetworkDeviceAttachment fed from a
// socket_vmnet-style daemon listening on the unix socket c.Socket (the
// daemon runs as root and holds the vmnet access, so macvz needs no
// entitlement). The result carries the path as the interfaces' socketPath.
type socketMode struct{}

func dialSocket(path string) error {
	fi, err := os.Stat(path)
	if err != nil {
		return fmt.Errorf("socket %s: %w", path, err)
	}
	if fi.Mode()&os.ModeSocket == 0 {
		return fmt.Errorf("%s is not a unix socket", path)
	}
	conn, err := net.DialTimeout("unix", path, 2*time.Second)
	if err != nil {
		return fmt.Errorf("socket %s: %w (is socket_vmnet running?)", path, err)
	}
	return conn.Close()
}

func (socketMode) add(args *skel.CmdArgs, c *NetConf) (*current.Result, error) {
	if fi, err := os.Stat(c.Socket); err != nil || fi.Mode()&os.ModeSocket == 0 {
		return nil, types.NewError(types.ErrTryAgainLater, fmt.Sprintf("socket %s is not there (is socket_vmnet running?)", c.Socket), "")
	}
	return darwinResult(args, c, &current.Interface{Name: HostSocket, SocketPath: c.Socket}), nil
}
func (socketMode) del(*skel.CmdArgs, *NetConf) error { return nil }
func (socketMode) check(args *skel.CmdArgs, c *NetConf) error {
	if _, err := checkGuestMAC(args, c); err != nil {
		return err
	}
	return dialSocket(c.Socket)
}
func (socketMode) status(_ *skel.CmdArgs, c *NetConf) error {
	if err := dialSocket(c.Socket); err != nil {
		return notAvailable("%v", err)
	}
	return nil
}
func (socketMode) gc(*skel.CmdArgs, *NetConf) error { return nil }

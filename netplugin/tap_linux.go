//go:build linux

package netplugin

import (
	"fmt"

	"github.com/containernetworking/plugins/pkg/netlinksafe"
	"github.com/vishvananda/netlink"
)

// CreateTap makes the tap device name as an ADD makes a pod's: persistent
// (TUNSETPERSIST, netlink's default for Tuntap), so it outlives this
// process, and QEMU attaches to it by name. The flags are the attacher's:
// QEMU sets its own (NO_PI, VNET_HDR). An ADD for the name adopts a tap
// made so (its alias, MTU, bridge and state), which is how a VM started
// before its pod's ADD (the daemon's warm pool) gets the pod's network.
func CreateTap(name string) error {
	t := &netlink.Tuntap{
		LinkAttrs: netlink.LinkAttrs{Name: name},
		Mode:      netlink.TUNTAP_MODE_TAP,
		Flags:     netlink.TUNTAP_NO_PI | netlink.TUNTAP_VNET_HDR,
	}
	if err := netlink.LinkAdd(t); err != nil {
		return fmt.Errorf("create tap %s: %w", name, err)
	}
	return nil
}

// DeleteTap removes the tap device name; none is fine. Anything else of
// that name is left alone.
func DeleteTap(name string) error {
	l, err := netlinksafe.LinkByName(name)
	if err != nil {
		if isNotFound(err) {
			return nil
		}
		return fmt.Errorf("tap %s: %w", name, err)
	}
	if _, ok := l.(*netlink.Tuntap); !ok {
		return fmt.Errorf("%s is a %s device, not a tap: not deleting it", name, l.Type())
	}
	if err := netlink.LinkDel(l); err != nil && !isNotFound(err) {
		return fmt.Errorf("delete tap %s: %w", name, err)
	}
	return nil
}

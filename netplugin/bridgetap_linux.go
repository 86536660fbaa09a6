//go:build linux

package netplugin

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"

	"github.com/containernetworking/cni/pkg/invoke"
	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/plugins/pkg/ip"
	"github.com/containernetworking/plugins/pkg/ipam"
	"github.com/containernetworking/plugins/pkg/netlinksafe"
	"github.com/containernetworking/plugins/pkg/utils/sysctl"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// bridgeTap is the Linux mode: VMs have no network namespace, so the
// "container side" of an attachment is a persistent tap device that QEMU
// opens later (-netdev tap,ifname=<tap>,script=no,downscript=no) as the
// VM's virtio-net NIC, with the guest MAC from the result.
type bridgeTap struct{}

// Result interfaces, by index.
const (
	ifBridge = 0
	ifTap    = 1
	ifGuest  = 2
)

func isNotFound(err error) bool {
	var nf netlink.LinkNotFoundError
	return errors.As(err, &nf)
}

func ensureBridge(name string, mtu int) (netlink.Link, error) {
	l, err := netlinksafe.LinkByName(name)
	if err != nil && !isNotFound(err) {
		return nil, fmt.Errorf("bridge %s: %w", name, err)
	}
	if err != nil {
		la := netlink.NewLinkAttrs()
		la.Name = name
		la.MTU = mtu
		la.HardwareAddr = BridgeMAC(name)
		if err := netlink.LinkAdd(&netlink.Bridge{LinkAttrs: la}); err != nil && !errors.Is(err, unix.EEXIST) {
			return nil, fmt.Errorf("create bridge %s: %w", name, err)
		}
		if l, err = netlinksafe.LinkByName(name); err != nil {
			return nil, fmt.Errorf("bridge %s: %w", name, err)
		}
	}
	if _, ok := l.(*netlink.Bridge); !ok {
		return nil, confErr("%s exists and is a %s device, not a bridge", name, l.Type())
	}
	if mtu > 0 && l.Attrs().MTU != mtu {
		if err := netlink.LinkSetMTU(l, mtu); err != nil {
			return nil, fmt.Errorf("bridge %s: set mtu %d: %w", name, mtu, err)
		}
	}
	if err := netlink.LinkSetUp(l); err != nil {
		return nil, fmt.Errorf("bridge %s: set up: %w", name, err)
	}
	return l, nil
}

// ensureTap makes (or adopts, on a repeated ADD) the attachment's tap and
// puts it on the bridge, up.
func ensureTap(name, alias string, br netlink.Link, mtu int, hairpin bool) (netlink.Link, error) {
	l, err := netlinksafe.LinkByName(name)
	if err != nil && !isNotFound(err) {
		return nil, fmt.Errorf("tap %s: %w", name, err)
	}
	if err != nil {
		if err := CreateTap(name); err != nil {
			return nil, err
		}
		if l, err = netlinksafe.LinkByName(name); err != nil {
			return nil, fmt.Errorf("tap %s: %w", name, err)
		}
	}
	if t, ok := l.(*netlink.Tuntap); !ok || t.Mode != netlink.TUNTAP_MODE_TAP {
		return nil, fmt.Errorf("%s exists and is a %s device, not a tap", name, l.Type())
	}
	if err := netlink.LinkSetAlias(l, alias); err != nil {
		return nil, fmt.Errorf("tap %s: set alias: %w", name, err)
	}
	if mtu > 0 && l.Attrs().MTU != mtu {
		if err := netlink.LinkSetMTU(l, mtu); err != nil {
			return nil, fmt.Errorf("tap %s: set mtu %d: %w", name, mtu, err)
		}
	}
	if err := netlink.LinkSetMaster(l, br); err != nil {
		return nil, fmt.Errorf("tap %s: attach to %s: %w", name, br.Attrs().Name, err)
	}
	if err := netlink.LinkSetHairpin(l, hairpin); err != nil {
		return nil, fmt.Errorf("tap %s: hairpin mode: %w", name, err)
	}
	if err := netlink.LinkSetUp(l); err != nil {
		return nil, fmt.Errorf("tap %s: set up: %w", name, err)
	}
	return netlinksafe.LinkByName(name)
}

func ensureAddr(l netlink.Link, addr *net.IPNet) error {
	fam := netlink.FAMILY_V6
	if addr.IP.To4() != nil {
		fam = netlink.FAMILY_V4
	}
	addrs, err := netlinksafe.AddrList(l, fam)
	if err != nil {
		return fmt.Errorf("%s: list addresses: %w", l.Attrs().Name, err)
	}
	for _, a := range addrs {
		if a.IP.Equal(addr.IP) {
			return nil
		}
	}
	if err := netlink.AddrAdd(l, &netlink.Addr{IPNet: addr}); err != nil && !errors.Is(err, unix.EEXIST) {
		return fmt.Errorf("%s: add address %s: %w", l.Attrs().Name, addr, err)
	}
	return nil
}

func delLink(name string) error {
	l, err := netlinksafe.LinkByName(name)
	if isNotFound(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	if err := netlink.LinkDel(l); err != nil && !isNotFound(err) && !errors.Is(err, unix.ENODEV) {
		return fmt.Errorf("delete %s: %w", name, err)
	}
	return nil
}

// gateway is the IP's gateway, or the first host of its subnet.
func gateway(ipc *current.IPConfig) net.IP {
	if ipc.Gateway != nil {
		return ipc.Gateway
	}
	return ip.NextIP(ipc.Address.IP.Mask(ipc.Address.Mask))
}

func (bridgeTap) add(args *skel.CmdArgs, c *NetConf) (res *current.Result, err error) {
	unlock, err := lock()
	if err != nil {
		return nil, err
	}
	defer unlock()

	br, err := ensureBridge(c.Bridge, c.MTU)
	if err != nil {
		return nil, err
	}
	tapName := TapName(c.Name, args.ContainerID, args.IfName)
	tag := Tag(c.Name, args.IfName, args.ContainerID)
	tap, err := ensureTap(tapName, tag, br, c.MTU, *c.HairpinMode)
	ipamDone := false
	defer func() {
		if err == nil {
			return
		}
		// Leave nothing behind: DEL may never come for a failed ADD.
		if n, nerr := openNFT(); nerr == nil {
			_, _ = n.deleteTagged(func(t string) bool { return t == tag })
		}
		if ipamDone {
			_ = ipam.ExecDel(c.IPAM.Type, c.ipamStdin)
		}
		_ = delLink(tapName)
	}()
	if err != nil {
		return nil, err
	}

	r, err := ipam.ExecAdd(c.IPAM.Type, c.ipamStdin)
	if err != nil {
		return nil, err
	}
	ipamDone = true
	res, err = current.NewResultFromResult(r)
	if err != nil {
		return nil, fmt.Errorf("IPAM %s result: %w", c.IPAM.Type, err)
	}
	if len(res.IPs) == 0 {
		return nil, fmt.Errorf("IPAM %s returned no IP address", c.IPAM.Type)
	}

	res.CNIVersion = current.ImplementedSpecVersion
	res.Interfaces = []*current.Interface{
		ifBridge: {Name: c.Bridge, Mac: br.Attrs().HardwareAddr.String(), Mtu: br.Attrs().MTU},
		ifTap:    {Name: tapName, Mac: tap.Attrs().HardwareAddr.String(), Mtu: tap.Attrs().MTU},
		ifGuest:  guestInterface(args, c),
	}
	for _, ipc := range res.IPs {
		ipc.Interface = current.Int(ifGuest)
		ipc.Gateway = gateway(ipc)
		if err := ensureAddr(br, &net.IPNet{IP: ipc.Gateway, Mask: ipc.Address.Mask}); err != nil {
			return nil, err
		}
	}
	if err := ip.EnableForward(res.IPs); err != nil {
		return nil, fmt.Errorf("enable forwarding: %w", err)
	}
	n, err := openNFT()
	if err != nil {
		return nil, err
	}
	// hostPorts from 127.0.0.1 need route_localnet, which needs the
	// loopback guard of the base first: see nft_linux.go.
	if err := n.ensureBase(); err != nil {
		return nil, err
	}
	if _, err := sysctl.Sysctl("net/ipv4/conf/"+c.Bridge+"/route_localnet", "1"); err != nil {
		return nil, fmt.Errorf("bridge %s: route_localnet: %w", c.Bridge, err)
	}
	if err := n.replace(tag, planRules(res.IPs, c.RuntimeConfig.PortMappings, c.nonMasq)); err != nil {
		return nil, err
	}
	flushUDPHostPorts(c.RuntimeConfig.PortMappings)
	res.DNS = c.resultDNS(res.DNS)
	return res, nil
}

func (bridgeTap) del(args *skel.CmdArgs, c *NetConf) error {
	unlock, err := lock()
	if err != nil {
		return err
	}
	defer unlock()

	tag := Tag(c.Name, args.IfName, args.ContainerID)
	var errs []error
	if n, err := openNFT(); err != nil {
		errs = append(errs, err)
	} else if _, err := n.deleteTagged(func(t string) bool { return t == tag }); err != nil {
		errs = append(errs, err)
	}
	if err := ipam.ExecDel(c.IPAM.Type, c.ipamStdin); err != nil {
		errs = append(errs, fmt.Errorf("IPAM %s DEL: %w", c.IPAM.Type, err))
	}
	if err := delLink(TapName(c.Name, args.ContainerID, args.IfName)); err != nil {
		errs = append(errs, err)
	}
	flushPodIPs(c.PrevResult)
	return errors.Join(errs...)
}

func (bridgeTap) check(args *skel.CmdArgs, c *NetConf) error {
	prev, err := checkGuestMAC(args, c)
	if err != nil {
		return err
	}
	br, err := netlinksafe.LinkByName(c.Bridge)
	if err != nil {
		return fmt.Errorf("bridge %s: %w", c.Bridge, err)
	}
	if _, ok := br.(*netlink.Bridge); !ok || br.Attrs().Flags&net.FlagUp == 0 {
		return fmt.Errorf("%s is not an up bridge", c.Bridge)
	}
	tapName := TapName(c.Name, args.ContainerID, args.IfName)
	tap, err := netlinksafe.LinkByName(tapName)
	if err != nil {
		return fmt.Errorf("tap %s: %w", tapName, err)
	}
	if _, ok := tap.(*netlink.Tuntap); !ok {
		return fmt.Errorf("%s is a %s device, not a tap", tapName, tap.Type())
	}
	if tap.Attrs().MasterIndex != br.Attrs().Index {
		return fmt.Errorf("tap %s is not on bridge %s", tapName, c.Bridge)
	}
	if tap.Attrs().Flags&net.FlagUp == 0 {
		return fmt.Errorf("tap %s is down", tapName)
	}
	var ips []*current.IPConfig
	for _, ipc := range prev.IPs {
		if ipc.Interface != nil && *ipc.Interface != ifGuest {
			continue
		}
		ips = append(ips, ipc)
		gw := gateway(ipc)
		fam := netlink.FAMILY_V6
		if gw.To4() != nil {
			fam = netlink.FAMILY_V4
		}
		addrs, err := netlinksafe.AddrList(br, fam)
		if err != nil {
			return err
		}
		found := false
		for _, a := range addrs {
			found = found || a.IP.Equal(gw)
		}
		if !found {
			return fmt.Errorf("bridge %s lacks the gateway address %s", c.Bridge, gw)
		}
	}
	if err := ipam.ExecCheck(c.IPAM.Type, c.ipamStdin); err != nil {
		return fmt.Errorf("IPAM %s CHECK: %w", c.IPAM.Type, err)
	}
	n, err := openNFT()
	if err != nil {
		return err
	}
	tag := Tag(c.Name, args.IfName, args.ContainerID)
	have, err := n.tagged(func(t string) bool { return t == tag })
	if err != nil {
		return err
	}
	if ok, err := n.hasLoopbackGuard(); err != nil {
		return err
	} else if !ok {
		return fmt.Errorf("nftables table %s lacks the input rules that keep what is on %s off the host's 127.0.0.0/8", TableName, c.Bridge)
	}
	want := planRules(ips, c.RuntimeConfig.PortMappings, c.nonMasq)
	if len(have[chainHostports]) != len(want.hostports) || len(have[chainPost]) != len(want.post) {
		return fmt.Errorf("nftables table %s: %d DNAT and %d NAT rules for %q, want %d and %d",
			TableName, len(have[chainHostports]), len(have[chainPost]), tag, len(want.hostports), len(want.post))
	}
	return nil
}

// hasCapNetAdmin reads the effective capability set of this process.
func hasCapNetAdmin() bool {
	f, err := os.Open("/proc/self/status")
	if err != nil {
		return os.Geteuid() == 0
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	for s.Scan() {
		if v, ok := strings.CutPrefix(s.Text(), "CapEff:"); ok {
			caps, err := strconv.ParseUint(strings.TrimSpace(v), 16, 64)
			return err == nil && caps&(1<<unix.CAP_NET_ADMIN) != 0
		}
	}
	return os.Geteuid() == 0
}

func (bridgeTap) status(args *skel.CmdArgs, c *NetConf) error {
	if fi, err := os.Stat("/dev/net/tun"); err != nil || fi.Mode()&os.ModeCharDevice == 0 {
		return notAvailable("no /dev/net/tun character device (is the tun module loaded?)")
	}
	if !hasCapNetAdmin() {
		return notAvailable("the plugin needs CAP_NET_ADMIN (run the runtime as root) to make taps, the bridge and NAT rules")
	}
	l, err := netlinksafe.LinkByName(c.Bridge)
	switch {
	case err == nil:
		if _, ok := l.(*netlink.Bridge); !ok {
			return notAvailable("%s exists and is a %s device, not a bridge", c.Bridge, l.Type())
		}
	case !isNotFound(err):
		return notAvailable("netlink: %v", err)
	}
	n, err := openNFT()
	if err == nil {
		_, err = n.tableExists()
	}
	if err != nil {
		return notAvailable("nftables unusable (kernel nf_tables support?): %v", err)
	}
	if err := ipam.ExecStatus(c.IPAM.Type, c.ipamStdin); err != nil {
		var te *types.Error
		if errors.As(err, &te) {
			return te
		}
		return notAvailable("IPAM plugin %s: %v", c.IPAM.Type, err)
	}
	if c.IPAM.Type == "host-local" {
		dir := c.HostLocalDir()
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return notAvailable("host-local store: %v", err)
		}
		if err := unix.Access(dir, unix.W_OK); err != nil {
			return notAvailable("host-local store %s is not writable: %v", dir, err)
		}
	}
	return nil
}

func (bridgeTap) gc(args *skel.CmdArgs, c *NetConf) error {
	unlock, err := lock()
	if err != nil {
		return err
	}
	defer unlock()

	validTags := map[string]bool{}
	validTaps := map[string]bool{}
	for _, a := range c.valid {
		validTags[Tag(c.Name, a.IfName, a.ContainerID)] = true
		validTaps[TapName(c.Name, a.ContainerID, a.IfName)] = true
	}
	prefix := networkTagPrefix(c.Name)
	var errs []error

	if n, err := openNFT(); err != nil {
		errs = append(errs, err)
	} else if _, err := n.deleteTagged(func(t string) bool { return strings.HasPrefix(t, prefix) && !validTags[t] }); err != nil {
		errs = append(errs, err)
	}

	brIndex := 0
	if br, err := netlinksafe.LinkByName(c.Bridge); err == nil {
		brIndex = br.Attrs().Index
	}
	links, err := netlinksafe.LinkList()
	if err != nil {
		errs = append(errs, fmt.Errorf("list links: %w", err))
	}
	for _, l := range links {
		a := l.Attrs()
		if _, ok := l.(*netlink.Tuntap); !ok || !strings.HasPrefix(a.Name, TapPrefix) || validTaps[a.Name] {
			continue
		}
		// Ours: tagged for this network, or untagged on its bridge (an
		// ADD that crashed between making the tap and tagging it).
		if strings.HasPrefix(a.Alias, prefix) || (a.Alias == "" && brIndex != 0 && a.MasterIndex == brIndex) {
			if err := netlink.LinkDel(l); err != nil && !isNotFound(err) {
				errs = append(errs, fmt.Errorf("delete tap %s: %w", a.Name, err))
			}
		}
	}

	if err := invoke.DelegateGC(context.TODO(), c.IPAM.Type, c.ipamStdin, nil); err != nil {
		errs = append(errs, fmt.Errorf("IPAM %s GC: %w", c.IPAM.Type, err))
	}
	if c.IPAM.Type == "host-local" {
		if _, err := gcHostLocal(c.HostLocalDir(), c.valid); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

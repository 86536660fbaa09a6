package netplugin

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net"
	"path/filepath"
	"runtime"
	"strings"

	"github.com/containernetworking/cni/pkg/types"
	"github.com/containernetworking/cni/pkg/utils"
	"github.com/containernetworking/cni/pkg/version"
)

// PluginType is the plugin's "type" in a network configuration: the name
// of its binary in the CNI plugin directory.
const PluginType = "macvz-net"

// Modes (the "mode" key).
const (
	// ModeBridgeTap (Linux): a persistent tap device per sandbox on a
	// bridge, host-local (or any) IPAM, NAT and hostPort DNAT.
	ModeBridgeTap = "bridge-tap"
	// ModeVmnetNAT (macOS): Virtualization.framework's NAT attachment;
	// vmnet's DHCP server gives the guest its address.
	ModeVmnetNAT = "vmnet-nat"
	// ModeVmnetBridged (macOS): Virtualization.framework's bridged
	// attachment to the host interface named by "interface". The shim
	// needs the restricted com.apple.vm.networking entitlement, which
	// only an Apple-provisioned build carries; bridge through
	// socket_vmnet (ModeSocket) instead.
	ModeVmnetBridged = "vmnet-bridged"
	// ModeSocket (macOS): a file-handle attachment relayed to
	// socket_vmnet's unix stream socket at "socket" (its shared or its
	// bridged network); no entitlement needed.
	ModeSocket = "socket"
)

// Defaults for bridge-tap.
const (
	DefaultBridge = "macvz0"
	DefaultSubnet = "10.88.0.0/16"
)

// Default guest subnets of the macOS shared networks, whose DHCP server
// (vmnet's bootpd) hands out the guests' addresses: vmnet's own shared
// network (Virtualization.framework's NAT attachment; 192.168.64.1/24
// unless /Library/Preferences/SystemConfiguration/com.apple.vmnet.plist
// sets Shared_Net_Address/Shared_Net_Mask) and socket_vmnet's
// (--vmnet-gateway, 192.168.105.1 by default). A network configured
// otherwise sets "subnet" (and "gateway" when it is not the subnet's
// first address).
const (
	DefaultVmnetNATSubnet = "192.168.64.0/24"
	DefaultSocketSubnet   = "192.168.105.0/24"
)

// Modes lists every mode, for messages.
var Modes = []string{ModeBridgeTap, ModeVmnetNAT, ModeVmnetBridged, ModeSocket}

// DefaultMode is the mode used when the configuration names none: the one
// the platform's VMs can use.
func DefaultMode() string {
	if runtime.GOOS == "darwin" {
		return ModeVmnetNAT
	}
	return ModeBridgeTap
}

// NetConf is the plugin's configuration (one entry of a conflist's
// "plugins", as the runtime passes it on stdin).
type NetConf struct {
	types.PluginConf

	// Mode is one of Modes; empty means DefaultMode().
	Mode string `json:"mode,omitempty"`
	// Bridge (bridge-tap) is the Linux bridge the taps join; default
	// macvz0. Its address is the gateway of the IPAM range.
	Bridge string `json:"bridge,omitempty"`
	// MTU of the bridge, the taps and (in the result) the guest interface;
	// 0 leaves the kernel's default (1500).
	MTU int `json:"mtu,omitempty"`
	// HairpinMode (bridge-tap) sets hairpin mode on each tap's bridge
	// port, so a guest can reach its own hostPort through the host (the
	// routed, DNATed packet goes back out the port it came in on); default
	// true.
	HairpinMode *bool `json:"hairpinMode,omitempty"`
	// Interface (vmnet-bridged) is the host interface to bridge to (en0).
	Interface string `json:"interface,omitempty"`
	// Socket (socket) is the path of socket_vmnet's unix stream socket.
	Socket string `json:"socket,omitempty"`
	// LAN (socket) says the socket is socket_vmnet's bridged mode: guests
	// take their addresses from the LAN's DHCP server, which leaves no
	// lease on the host, so the daemon takes the address the guest
	// reports inside "subnet" (the LAN's, required), as for
	// vmnet-bridged.
	LAN bool `json:"lan,omitempty"`
	// Subnet (vmnet-nat, socket, vmnet-bridged) is the IPv4 subnet the
	// DHCP server gives guests their addresses from, and Gateway the
	// host's (router's) address in it. The daemon accepts a guest's
	// address only inside it, never the gateway. Defaults:
	// DefaultVmnetNATSubnet (vmnet-nat), DefaultSocketSubnet (socket),
	// none (vmnet-bridged: the LAN's); the gateway defaults to the
	// subnet's first address.
	Subnet  string `json:"subnet,omitempty"`
	Gateway string `json:"gateway,omitempty"`
	// NonMasqueradeCIDRs (bridge-tap) are destinations a pod reaches
	// with its own address: traffic to anywhere outside the pod's subnet
	// is masqueraded behind the node except to these. A cluster's pod
	// CIDR (e.g. 10.244.0.0/16) belongs here, so pods on other nodes see
	// the pod's IP, as Kubernetes' network model has it.
	NonMasqueradeCIDRs []string `json:"nonMasqueradeCIDRs,omitempty"`

	RuntimeConfig RuntimeConfig `json:"runtimeConfig,omitempty"`

	// ipam is the decoded "ipam" section (with defaults filled in).
	ipam ipamConf
	// nonMasq are NonMasqueradeCIDRs, parsed.
	nonMasq []*net.IPNet
	// ipamStdin is stdin with the defaulted "ipam" section: what the
	// delegated IPAM plugin reads.
	ipamStdin []byte
	// valid is the GC's list of still-valid attachments; hasValid says the
	// key was present.
	valid    []types.GCAttachment
	hasValid bool
}

// RuntimeConfig is what the runtime passes for the capabilities the
// configuration declares ("capabilities": {"portMappings": true, ...}).
type RuntimeConfig struct {
	PortMappings []PortMapping `json:"portMappings,omitempty"`
	DNS          *DNS          `json:"dns,omitempty"`
	// MAC overrides the derived guest MAC (capability "mac").
	MAC string `json:"mac,omitempty"`
}

// PortMapping is one entry of the portMappings capability (the CNI
// conventions' format, as kubelet and libcni send it).
type PortMapping struct {
	HostPort      int    `json:"hostPort"`
	ContainerPort int    `json:"containerPort"`
	Protocol      string `json:"protocol,omitempty"` // tcp (default), udp, sctp
	HostIP        string `json:"hostIP,omitempty"`   // empty, 0.0.0.0 or :: = every local address
}

// DNS is the dns capability (servers, searches, options).
type DNS struct {
	Servers  []string `json:"servers,omitempty"`
	Searches []string `json:"searches,omitempty"`
	Options  []string `json:"options,omitempty"`
}

// ipamConf is the part of a host-local-style "ipam" section the plugin
// reads itself: to validate it and to find host-local's store for GC.
type ipamConf struct {
	Type    string        `json:"type"`
	Subnet  string        `json:"subnet,omitempty"`
	Ranges  [][]ipamRange `json:"ranges,omitempty"`
	DataDir string        `json:"dataDir,omitempty"`
}

type ipamRange struct {
	Subnet     string `json:"subnet"`
	RangeStart string `json:"rangeStart,omitempty"`
	RangeEnd   string `json:"rangeEnd,omitempty"`
	Gateway    string `json:"gateway,omitempty"`
}

// HostLocalDefaultDataDir is where host-local keeps its reservations
// unless the ipam section sets "dataDir".
const HostLocalDefaultDataDir = "/var/lib/cni/networks"

// HostLocalDir is the directory of one network's host-local reservations
// (one file per IP holding "<containerID>\r\n<ifname>").
func (c *NetConf) HostLocalDir() string {
	d := c.ipam.DataDir
	if d == "" {
		d = HostLocalDefaultDataDir
	}
	return filepath.Join(d, c.Name)
}

// confErr is a configuration error: CNI code 7 with the message.
func confErr(format string, args ...any) *types.Error {
	return types.NewError(types.ErrInvalidNetworkConfig, fmt.Sprintf(format, args...), "")
}

// LoadConf parses and validates the plugin's stdin: defaults filled, every
// error a *types.Error with a CNI code (7 for bad configuration). Mode
// availability on this platform is checked by the caller.
func LoadConf(stdin []byte) (*NetConf, error) {
	c := &NetConf{}
	if err := json.Unmarshal(stdin, c); err != nil {
		return nil, types.NewError(types.ErrDecodingFailure, "parse network configuration: "+err.Error(), "")
	}
	if c.Name == "" {
		return nil, confErr("missing network name (\"name\")")
	}
	if err := version.ParsePrevResult(&c.PluginConf); err != nil {
		return nil, types.NewError(types.ErrDecodingFailure, "parse prevResult: "+err.Error(), "")
	}
	if c.Mode == "" {
		c.Mode = DefaultMode()
	}
	known := false
	for _, m := range Modes {
		known = known || m == c.Mode
	}
	if !known {
		return nil, confErr("unknown mode %q (want one of %s)", c.Mode, strings.Join(Modes, ", "))
	}
	if c.MTU != 0 && (c.MTU < 68 || c.MTU > 65535) {
		return nil, confErr("mtu %d out of range (68-65535, or 0 for the default)", c.MTU)
	}
	if err := c.RuntimeConfig.validate(); err != nil {
		return nil, err
	}

	// GC's valid attachments: the key must be there (an empty list means
	// nothing is valid); libcni also sends the older spelling.
	var raw map[string]json.RawMessage
	if err := json.Unmarshal(stdin, &raw); err != nil {
		return nil, types.NewError(types.ErrDecodingFailure, "parse network configuration: "+err.Error(), "")
	}
	for _, k := range []string{"cni.dev/valid-attachments", "cni.dev/attachments"} {
		v, ok := raw[k]
		if !ok {
			continue
		}
		var list []types.GCAttachment
		if err := json.Unmarshal(v, &list); err != nil {
			return nil, types.NewError(types.ErrDecodingFailure, "parse "+k+": "+err.Error(), "")
		}
		c.valid, c.hasValid = list, true
		break
	}

	switch c.Mode {
	case ModeBridgeTap:
		if c.Bridge == "" {
			c.Bridge = DefaultBridge
		}
		if err := utils.ValidateInterfaceName(c.Bridge); err != nil {
			return nil, confErr("bridge %q: %s", c.Bridge, err.Msg)
		}
		if c.HairpinMode == nil {
			on := true
			c.HairpinMode = &on
		}
		if err := c.loadIPAM(stdin, raw); err != nil {
			return nil, err
		}
		for _, cidr := range c.NonMasqueradeCIDRs {
			_, n, err := net.ParseCIDR(cidr)
			if err != nil {
				return nil, confErr("nonMasqueradeCIDRs: %q is not a CIDR (e.g. 10.244.0.0/16)", cidr)
			}
			c.nonMasq = append(c.nonMasq, n)
		}
	case ModeVmnetBridged:
		if c.Interface == "" {
			return nil, confErr("mode %s needs \"interface\" (the host interface to bridge to, e.g. en0)", c.Mode)
		}
	case ModeSocket:
		if c.Socket == "" || !filepath.IsAbs(c.Socket) {
			return nil, confErr("mode %s needs \"socket\", the absolute path of socket_vmnet's unix socket (got %q)", c.Mode, c.Socket)
		}
		if c.LAN && c.Subnet == "" {
			return nil, confErr("mode %s with \"lan\": true needs \"subnet\", the LAN's (a guest's address is taken only inside it)", c.Mode)
		}
	}
	if c.LAN && c.Mode != ModeSocket {
		return nil, confErr("\"lan\" is for mode %s (socket_vmnet's bridged mode), not %s", ModeSocket, c.Mode)
	}
	if c.Mode != ModeBridgeTap {
		if _, _, err := c.GuestSubnet(); err != nil {
			return nil, err
		}
	} else if c.Subnet != "" || c.Gateway != "" {
		return nil, confErr("mode %s takes its subnet from \"ipam\", not \"subnet\"/\"gateway\"", c.Mode)
	}
	if c.Mode != ModeBridgeTap && len(c.NonMasqueradeCIDRs) > 0 {
		return nil, confErr("mode %s does not masquerade (vmnet does): \"nonMasqueradeCIDRs\" is for bridge-tap", c.Mode)
	}
	if c.Mode != ModeBridgeTap && len(raw["ipam"]) > 0 && string(raw["ipam"]) != "null" && string(raw["ipam"]) != "{}" {
		return nil, confErr("mode %s takes no \"ipam\": the guest's address comes from vmnet's DHCP", c.Mode)
	}
	return c, nil
}

// loadIPAM fills in the default IPAM (host-local on DefaultSubnet with a
// default route), validates what it can, and prepares the IPAM plugin's
// stdin.
func (c *NetConf) loadIPAM(stdin []byte, raw map[string]json.RawMessage) error {
	var ipam map[string]any
	if v := raw["ipam"]; len(v) > 0 && string(v) != "null" {
		if err := json.Unmarshal(v, &ipam); err != nil {
			return confErr("ipam: %v", err)
		}
	}
	if len(ipam) == 0 {
		ipam = map[string]any{"type": "host-local"}
	}
	if t, _ := ipam["type"].(string); t == "" {
		return confErr("ipam: missing \"type\" (e.g. host-local)")
	}
	if ipam["type"] == "host-local" {
		_, hasRanges := ipam["ranges"]
		_, hasSubnet := ipam["subnet"]
		if !hasRanges && !hasSubnet {
			ipam["ranges"] = []any{[]any{map[string]any{"subnet": DefaultSubnet}}}
			if _, ok := ipam["routes"]; !ok {
				ipam["routes"] = []any{map[string]any{"dst": "0.0.0.0/0"}}
			}
		}
	}
	b, err := json.Marshal(ipam)
	if err != nil {
		return confErr("ipam: %v", err)
	}
	if err := json.Unmarshal(b, &c.ipam); err != nil {
		return confErr("ipam: %v", err)
	}
	if c.ipam.Type == "host-local" {
		if c.ipam.Subnet != "" {
			if _, _, err := net.ParseCIDR(c.ipam.Subnet); err != nil {
				return confErr("ipam.subnet %q: not a CIDR subnet", c.ipam.Subnet)
			}
		}
		for i, set := range c.ipam.Ranges {
			if len(set) == 0 {
				return confErr("ipam.ranges[%d]: empty range set", i)
			}
			for j, r := range set {
				if _, _, err := net.ParseCIDR(r.Subnet); err != nil {
					return confErr("ipam.ranges[%d][%d].subnet %q: not a CIDR subnet", i, j, r.Subnet)
				}
				for k, v := range map[string]string{"rangeStart": r.RangeStart, "rangeEnd": r.RangeEnd, "gateway": r.Gateway} {
					if v != "" && net.ParseIP(v) == nil {
						return confErr("ipam.ranges[%d][%d].%s %q: not an IP address", i, j, k, v)
					}
				}
			}
		}
	}
	c.IPAM.Type = c.ipam.Type

	var all map[string]any
	d := json.NewDecoder(bytes.NewReader(stdin))
	d.UseNumber()
	if err := d.Decode(&all); err != nil {
		return confErr("%v", err)
	}
	all["ipam"] = ipam
	c.ipamStdin, err = json.Marshal(all)
	if err != nil {
		return confErr("%v", err)
	}
	return nil
}

func (rc *RuntimeConfig) validate() error {
	for i := range rc.PortMappings {
		pm := &rc.PortMappings[i]
		pm.Protocol = strings.ToLower(pm.Protocol)
		if pm.Protocol == "" {
			pm.Protocol = "tcp"
		}
		switch pm.Protocol {
		case "tcp", "udp", "sctp":
		default:
			return confErr("runtimeConfig.portMappings[%d]: protocol %q (want tcp, udp or sctp)", i, pm.Protocol)
		}
		if pm.HostPort < 1 || pm.HostPort > 65535 {
			return confErr("runtimeConfig.portMappings[%d]: hostPort %d out of range", i, pm.HostPort)
		}
		if pm.ContainerPort < 1 || pm.ContainerPort > 65535 {
			return confErr("runtimeConfig.portMappings[%d]: containerPort %d out of range", i, pm.ContainerPort)
		}
		if pm.HostIP != "" && net.ParseIP(pm.HostIP) == nil {
			return confErr("runtimeConfig.portMappings[%d]: hostIP %q is not an IP address", i, pm.HostIP)
		}
	}
	if rc.MAC != "" {
		hw, err := net.ParseMAC(rc.MAC)
		if err != nil || len(hw) != 6 {
			return confErr("runtimeConfig.mac %q: not a 48-bit MAC address", rc.MAC)
		}
		if hw[0]&1 != 0 {
			return confErr("runtimeConfig.mac %q: a multicast address", rc.MAC)
		}
	}
	return nil
}

// GuestMAC is the MAC the guest's NIC gets: the mac capability when the
// runtime passed one, else derived from the attachment.
func (c *NetConf) GuestMAC(containerID, ifName string) string {
	if c.RuntimeConfig.MAC != "" {
		hw, _ := net.ParseMAC(c.RuntimeConfig.MAC)
		return hw.String()
	}
	return GuestMAC(c.Name, containerID, ifName)
}

// resultDNS is the DNS the result carries: the dns capability, else the
// configuration's "dns", else fallback (from IPAM).
func (c *NetConf) resultDNS(fallback types.DNS) types.DNS {
	if d := c.RuntimeConfig.DNS; d != nil && (len(d.Servers) > 0 || len(d.Searches) > 0 || len(d.Options) > 0) {
		return types.DNS{Nameservers: d.Servers, Search: d.Searches, Options: d.Options}
	}
	if !c.DNS.IsEmpty() {
		return c.DNS
	}
	return fallback
}

// GuestSubnet is the subnet a DHCP-served (vmnet, socket) network gives
// guest addresses from, and its gateway; nil when unknown (vmnet-bridged
// without "subnet"). Errors are configuration errors naming the key.
func (c *NetConf) GuestSubnet() (*net.IPNet, net.IP, error) {
	s := c.Subnet
	if s == "" {
		s = DefaultGuestSubnet(c.Mode)
	}
	if s == "" {
		if c.Gateway != "" {
			return nil, nil, confErr("\"gateway\" %q needs \"subnet\"", c.Gateway)
		}
		return nil, nil, nil
	}
	ip, n, err := net.ParseCIDR(s)
	if err != nil || ip.To4() == nil {
		return nil, nil, confErr("subnet %q: not an IPv4 CIDR subnet", s)
	}
	if ones, _ := n.Mask.Size(); ones > 30 {
		return nil, nil, confErr("subnet %q: too small for guests (at most /30)", s)
	}
	var gw net.IP
	if c.Gateway != "" {
		if gw = net.ParseIP(c.Gateway).To4(); gw == nil || !n.Contains(gw) {
			return nil, nil, confErr("gateway %q: not an IPv4 address in subnet %s", c.Gateway, n)
		}
	} else {
		gw = append(net.IP(nil), n.IP.To4()...)
		gw[3]++
	}
	return n, gw, nil
}

// Summary says which mode a network uses and what that means for pods,
// for `crictl info` (a CNI STATUS that succeeds prints nothing).
func (c *NetConf) Summary() string {
	switch c.Mode {
	case ModeSocket:
		if c.LAN {
			return fmt.Sprintf("mode socket: socket_vmnet's bridged network at %s (pods on the LAN; a pod IP is what its guest reports inside %s)", c.Socket, c.Subnet)
		}
		return fmt.Sprintf("mode socket: socket_vmnet's shared network at %s (pods, the node VM and the host reach each other)", c.Socket)
	case ModeVmnetNAT:
		return "mode vmnet-nat: vmnet isolates every VM, so pods reach neither each other nor the node VM (right for a single-pod CI host; socket_vmnet's shared network joins them)"
	case ModeVmnetBridged:
		return fmt.Sprintf("mode vmnet-bridged on %s (needs the com.apple.vm.networking entitlement)", c.Interface)
	case ModeBridgeTap:
		br := c.Bridge
		if br == "" {
			br = DefaultBridge
		}
		return fmt.Sprintf("mode bridge-tap on bridge %s", br)
	}
	return "mode " + c.Mode
}

// DefaultGuestSubnet is a mode's default "subnet" ("" for none).
func DefaultGuestSubnet(mode string) string {
	switch mode {
	case ModeVmnetNAT:
		return DefaultVmnetNATSubnet
	case ModeSocket:
		return DefaultSocketSubnet
	}
	return ""
}

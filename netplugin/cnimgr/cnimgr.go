// Package cnimgr is the daemon's side of pod networking: it finds the
// network configuration (a conflist whose first plugin is macvz-net),
// runs it through libcni for each sandbox, and turns the CNI result into
// what the VM and the guest agent need (the NIC to attach, the guest's
// addresses, routes and DNS).
//
// The daemon calls Status for RuntimeStatus's NetworkReady, Setup on
// RunPodSandbox, Teardown on StopPodSandbox (idempotent), Attachment after
// a restart, and GC at start with the sandboxes it still has.
//
// VMs have no network namespace: the sandbox's state directory is passed
// as CNI_NETNS, and macvz-net only echoes it back.
package cnimgr

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/invoke"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/cni/pkg/version"
	"github.com/macvz/macvz/netplugin"
	"github.com/macvz/macvz/runtime/vm"
)

// Defaults.
const (
	DefaultConfDir  = "/etc/macvz/net.d"
	DefaultBinDir   = "/opt/macvz/bin"
	DefaultCacheDir = "/var/lib/macvz/cni"
	DefaultIfName   = "eth0"
)

// Config says where the network configuration and the plugins are.
type Config struct {
	// ConfDir holds the network configuration: *.conflist (or a single
	// plugin's *.conf/*.json); the first file in name order is used
	// unless Network names one. Default DefaultConfDir.
	ConfDir string
	// BinDirs are searched for plugin binaries (macvz-net, host-local,
	// any chained plugin). Default [DefaultBinDir].
	BinDirs []string
	// CacheDir is libcni's result cache (what Teardown and GC use to undo
	// an ADD even after the configuration changed). Default
	// DefaultCacheDir.
	CacheDir string
	// Network, when set, picks the configuration with that "name".
	Network string
	// IfName is the guest interface's CNI_IFNAME. Default eth0.
	IfName string
	// Exec runs the plugins; nil is libcni's default (fork/exec).
	Exec invoke.Exec
}

// Manager runs the network configuration. It is safe for concurrent use
// (the plugin serializes what must be).
type Manager struct {
	cfg Config
	cni *libcni.CNIConfig
}

// New returns a Manager; the configuration is read on every call, so one
// added or fixed later is picked up (Status says when there is none).
func New(cfg Config) (*Manager, error) {
	if cfg.ConfDir == "" {
		cfg.ConfDir = DefaultConfDir
	}
	if len(cfg.BinDirs) == 0 {
		cfg.BinDirs = []string{DefaultBinDir}
	}
	if cfg.CacheDir == "" {
		cfg.CacheDir = DefaultCacheDir
	}
	if cfg.IfName == "" {
		cfg.IfName = DefaultIfName
	}
	for _, d := range append([]string{cfg.ConfDir, cfg.CacheDir}, cfg.BinDirs...) {
		if !filepath.IsAbs(d) {
			return nil, fmt.Errorf("cnimgr: %q is not an absolute path", d)
		}
	}
	exec := cfg.Exec
	if exec == nil {
		// Not left to libcni: it makes its default lazily, unguarded, which
		// races when sandboxes are set up concurrently.
		exec = &invoke.DefaultExec{RawExec: &invoke.RawExec{Stderr: os.Stderr}, PluginDecoder: version.PluginDecoder{}}
	}
	return &Manager{cfg: cfg, cni: libcni.NewCNIConfigWithCacheDir(cfg.BinDirs, cfg.CacheDir, exec)}, nil
}

// Config is the effective configuration (defaults filled in).
func (m *Manager) Config() Config { return m.cfg }

// PortMapping is one hostPort, passed as the portMappings capability.
type PortMapping struct {
	HostPort      int32  `json:"hostPort"`
	ContainerPort int32  `json:"containerPort"`
	Protocol      string `json:"protocol,omitempty"` // tcp (default), udp, sctp
	HostIP        string `json:"hostIP,omitempty"`
}

// DNS is the dns capability on the way in and the result's DNS on the way
// out (what the guest's resolv.conf gets).
type DNS struct {
	Servers  []string `json:"servers,omitempty"`
	Searches []string `json:"searches,omitempty"`
	Options  []string `json:"options,omitempty"`
	Domain   string   `json:"domain,omitempty"`
}

// IPConfig is one of the guest's addresses.
type IPConfig struct {
	Address net.IPNet // the guest's IP with its prefix
	Gateway net.IP    // may be nil
}

// Route is one guest route; GW is filled with the gateway of the route's
// family when the result leaves it out.
type Route struct {
	Dst net.IPNet
	GW  net.IP
}

// Attachment is a sandbox's network attachment, from the CNI result.
type Attachment struct {
	Network string
	IfName  string
	// Kind, Device and MAC describe the VM's NIC (see NIC).
	Kind   vm.NICKind
	Device string // the tap (tap), the host interface (vmnet-bridged), the socket path (socket)
	MAC    string
	MTU    int // 0: the default
	// IPs are empty on macOS (vmnet's DHCP assigns the address: the
	// daemon learns it from the guest agent or netplugin/dhcpleases).
	IPs []IPConfig
	// Subnet and Gateway (vmnet, socket) are where the DHCP server gives
	// the guest its address and the host's address there (the network's
	// "subnet"/"gateway" or the mode's defaults); nil when unknown. The
	// daemon accepts a guest-reported address only inside Subnet.
	Subnet  *net.IPNet
	Gateway net.IP
	// LAN (socket): the guest's address comes from the LAN's DHCP
	// server, not the host's (socket_vmnet's bridged mode).
	LAN    bool
	Routes []Route
	DNS    DNS
	// PortMappingsHandled says the network maps hostPorts itself (a
	// plugin declares the portMappings capability and the mode does it);
	// otherwise the daemon proxies them (netplugin/portproxy).
	PortMappingsHandled bool
	// Result is the final CNI result, as the last plugin returned it.
	Result *current.Result
}

// NIC is the VM's network interface for this attachment.
func (a *Attachment) NIC() vm.NIC {
	return vm.NIC{Kind: a.Kind, Device: a.Device, MAC: a.MAC}
}

// PodIPs are the guest's IPs as strings, IPv4 first (CRI's PodIP and
// AdditionalIPs).
func (a *Attachment) PodIPs() []string {
	var v4, v6 []string
	for _, ip := range a.IPs {
		if ip.Address.IP.To4() != nil {
			v4 = append(v4, ip.Address.IP.String())
		} else {
			v6 = append(v6, ip.Address.IP.String())
		}
	}
	return append(v4, v6...)
}

// StatusError says why the network is not ready; Reason is a short
// CamelCase word for NetworkReady's reason, Error() the message.
type StatusError struct {
	Reason  string
	Message string
	Err     error
}

func (e *StatusError) Error() string { return e.Message }
func (e *StatusError) Unwrap() error { return e.Err }

// Reasons.
const (
	ReasonNoConfig        = "NoNetworkConfig"
	ReasonBadConfig       = "InvalidNetworkConfig"
	ReasonPluginMissing   = "NetworkPluginMissing"
	ReasonPluginNotReady  = "NetworkPluginNotReady"
	ReasonNotMacvzNetwork = "NotAMacvzNetwork"
)

func statusErr(reason string, err error, format string, args ...any) *StatusError {
	return &StatusError{Reason: reason, Message: fmt.Sprintf(format, args...), Err: err}
}

// Load reads the network configuration the Manager uses.
func (m *Manager) Load() (*libcni.NetworkConfigList, error) {
	files, err := libcni.ConfFiles(m.cfg.ConfDir, []string{".conflist", ".conf", ".json"})
	if err != nil {
		return nil, statusErr(ReasonBadConfig, err, "read network config dir %s: %v", m.cfg.ConfDir, err)
	}
	sort.Strings(files)
	var errs []string
	for _, f := range files {
		var list *libcni.NetworkConfigList
		if strings.HasSuffix(f, ".conflist") {
			list, err = libcni.NetworkConfFromFile(f)
		} else {
			var conf *libcni.PluginConfig
			if conf, err = libcni.ConfFromFile(f); err == nil {
				list, err = libcni.ConfListFromConf(conf)
			}
		}
		if err == nil && len(list.Plugins) == 0 {
			err = errors.New("no plugins")
		}
		if err != nil {
			errs = append(errs, fmt.Sprintf("%s: %v", f, err))
			continue
		}
		if m.cfg.Network != "" && list.Name != m.cfg.Network {
			continue
		}
		return list, nil
	}
	what := "no network config"
	if m.cfg.Network != "" {
		what = fmt.Sprintf("no network config named %q", m.cfg.Network)
	}
	if len(errs) > 0 {
		return nil, statusErr(ReasonBadConfig, nil, "%s in %s (%s)", what, m.cfg.ConfDir, strings.Join(errs, "; "))
	}
	return nil, statusErr(ReasonNoConfig, nil, "%s in %s", what, m.cfg.ConfDir)
}

// ourConf decodes the list's first plugin, which must be macvz-net.
func ourConf(list *libcni.NetworkConfigList) (*netplugin.NetConf, error) {
	first := list.Plugins[0]
	if first.Network.Type != netplugin.PluginType {
		return nil, statusErr(ReasonNotMacvzNetwork, nil,
			"network %q: the first plugin is %q; VM sandboxes need %s first (other plugins may follow)",
			list.Name, first.Network.Type, netplugin.PluginType)
	}
	c := &netplugin.NetConf{}
	if err := json.Unmarshal(first.Bytes, c); err != nil {
		return nil, statusErr(ReasonBadConfig, err, "network %q: %v", list.Name, err)
	}
	if c.Mode == "" {
		c.Mode = netplugin.DefaultMode()
	}
	return c, nil
}

func hasCapability(list *libcni.NetworkConfigList, name string) bool {
	for _, p := range list.Plugins {
		if p.Network.Capabilities[name] {
			return true
		}
	}
	return false
}

// Status reports whether the network can set up sandboxes: a
// configuration is there, macvz-net is its first plugin, every plugin is
// installed and speaks its version, and (CNI 1.1 configurations) every
// plugin's STATUS passes. The error is a *StatusError.
func (m *Manager) Status(ctx context.Context) error {
	list, err := m.Load()
	if err != nil {
		return err
	}
	if _, err := ourConf(list); err != nil {
		return err
	}
	for _, p := range list.Plugins {
		if _, err := invoke.FindInPath(p.Network.Type, m.cfg.BinDirs); err != nil {
			return statusErr(ReasonPluginMissing, err, "network %q: plugin %s not found in %s",
				list.Name, p.Network.Type, strings.Join(m.cfg.BinDirs, ":"))
		}
	}
	if _, err := m.cni.ValidateNetworkList(ctx, list); err != nil {
		return statusErr(ReasonBadConfig, err, "network %q: %v", list.Name, err)
	}
	if err := m.cni.GetStatusNetworkList(ctx, list); err != nil {
		return statusErr(ReasonPluginNotReady, err, "network %q: %s", list.Name, describe(err))
	}
	return nil
}

// Summary says which network pods join and in which mode (what
// NetConf.Summary says), for a network that is ready.
func (m *Manager) Summary() (string, error) {
	list, err := m.Load()
	if err != nil {
		return "", err
	}
	c, err := ourConf(list)
	if err != nil {
		return "", err
	}
	return fmt.Sprintf("network %q, %s", list.Name, c.Summary()), nil
}

// describe renders a plugin error with its CNI code.
func describe(err error) string {
	var te *types.Error
	if errors.As(err, &te) {
		msg := te.Msg
		if te.Details != "" {
			msg += "; " + te.Details
		}
		return fmt.Sprintf("%s (CNI error %d)", msg, te.Code)
	}
	return err.Error()
}

// Option adds to a Setup.
type Option func(*options)

type options struct {
	dns  *DNS
	mac  string
	args [][2]string
}

// WithDNS passes the sandbox's DNS config (servers, searches, options) as
// the dns capability; the result's DNS is then exactly that.
func WithDNS(d DNS) Option { return func(o *options) { o.dns = &d } }

// WithMAC sets the guest MAC (the mac capability) instead of the
// plugin's derived one.
func WithMAC(mac string) Option { return func(o *options) { o.mac = mac } }

// WithArgs adds CNI_ARGS pairs (K8S_POD_NAMESPACE, K8S_POD_NAME, ...);
// IgnoreUnknown=1 is sent with them.
func WithArgs(kv ...[2]string) Option { return func(o *options) { o.args = append(o.args, kv...) } }

func (m *Manager) runtimeConf(sandboxID, sandboxDir string, ports []PortMapping, opts []Option) *libcni.RuntimeConf {
	var o options
	for _, f := range opts {
		f(&o)
	}
	caps := map[string]any{}
	if len(ports) > 0 {
		caps["portMappings"] = ports
	}
	if o.dns != nil {
		caps["dns"] = o.dns
	}
	if o.mac != "" {
		caps["mac"] = o.mac
	}
	args := o.args
	if len(args) > 0 {
		// Plugins that parse CNI_ARGS strictly (host-local) accept the
		// ones they do not know only with this first.
		args = append([][2]string{{"IgnoreUnknown", "1"}}, args...)
	}
	return &libcni.RuntimeConf{
		ContainerID:    sandboxID,
		NetNS:          sandboxDir,
		IfName:         m.cfg.IfName,
		Args:           args,
		CapabilityArgs: caps,
	}
}

// Setup attaches a sandbox (CNI ADD of the whole list). sandboxDir is its
// state directory (CNI_NETNS); ports are its hostPorts. On failure nothing
// is left behind (a DEL is run).
func (m *Manager) Setup(ctx context.Context, sandboxID, sandboxDir string, ports []PortMapping, opts ...Option) (*Attachment, error) {
	list, err := m.Load()
	if err != nil {
		return nil, err
	}
	conf, err := ourConf(list)
	if err != nil {
		return nil, err
	}
	if len(ports) > 0 && conf.Mode == netplugin.ModeBridgeTap && !hasCapability(list, "portMappings") {
		return nil, fmt.Errorf("network %q declares no portMappings capability, so its hostPorts cannot be set up: add \"capabilities\": {\"portMappings\": true} to the %s plugin", list.Name, netplugin.PluginType)
	}
	rt := m.runtimeConf(sandboxID, sandboxDir, ports, opts)
	res, err := m.cni.AddNetworkList(ctx, list, rt)
	if err == nil {
		var a *Attachment
		if a, err = m.attachment(list, conf, rt, res); err == nil {
			return a, nil
		}
	}
	if derr := m.cni.DelNetworkList(context.WithoutCancel(ctx), list, rt); derr != nil {
		err = fmt.Errorf("%w (and undoing it failed: %s)", err, describe(derr))
	}
	return nil, fmt.Errorf("network %q: set up sandbox %s: %s", list.Name, sandboxID, describe(err))
}

// Teardown detaches a sandbox (CNI DEL), with the configuration it was set
// up with when libcni cached it, else the current one. Tearing down a
// sandbox that has nothing is not an error.
func (m *Manager) Teardown(ctx context.Context, sandboxID, sandboxDir string, ports []PortMapping, opts ...Option) error {
	cached, err := m.cni.GetCachedAttachments(sandboxID)
	if err != nil {
		return fmt.Errorf("network cache: %w", err)
	}
	var errs []error
	done := map[string]bool{}
	for _, a := range cached {
		if a.IfName != m.cfg.IfName {
			continue
		}
		list, err := libcni.NetworkConfFromBytes(a.Config)
		if err != nil {
			errs = append(errs, fmt.Errorf("cached network %q of sandbox %s: %w", a.Network, sandboxID, err))
			continue
		}
		rt := &libcni.RuntimeConf{ContainerID: sandboxID, NetNS: a.NetNS, IfName: a.IfName, Args: a.CniArgs, CapabilityArgs: a.CapabilityArgs}
		if rt.NetNS == "" {
			rt.NetNS = sandboxDir
		}
		if err := m.cni.DelNetworkList(ctx, list, rt); err != nil {
			errs = append(errs, fmt.Errorf("network %q: tear down sandbox %s: %s", a.Network, sandboxID, describe(err)))
		}
		done[a.Network] = true
	}
	// The current configuration too: an ADD that died before libcni
	// cached its result left state only the plugin knows.
	list, err := m.Load()
	if err == nil && !done[list.Name] {
		if err := m.cni.DelNetworkList(ctx, list, m.runtimeConf(sandboxID, sandboxDir, ports, opts)); err != nil {
			errs = append(errs, fmt.Errorf("network %q: tear down sandbox %s: %s", list.Name, sandboxID, describe(err)))
		}
	}
	return errors.Join(errs...)
}

// Check runs CNI CHECK for a sandbox against its cached result.
func (m *Manager) Check(ctx context.Context, sandboxID, sandboxDir string, ports []PortMapping, opts ...Option) error {
	list, err := m.Load()
	if err != nil {
		return err
	}
	if err := m.cni.CheckNetworkList(ctx, list, m.runtimeConf(sandboxID, sandboxDir, ports, opts)); err != nil {
		return fmt.Errorf("network %q: check sandbox %s: %s", list.Name, sandboxID, describe(err))
	}
	return nil
}

// Attachment returns a sandbox's attachment from libcni's cache (after a
// daemon restart); os.ErrNotExist when there is none.
func (m *Manager) Attachment(sandboxID string) (*Attachment, error) {
	cached, err := m.cni.GetCachedAttachments(sandboxID)
	if err != nil {
		return nil, err
	}
	for _, a := range cached {
		if a.IfName != m.cfg.IfName {
			continue
		}
		list, err := libcni.NetworkConfFromBytes(a.Config)
		if err != nil {
			return nil, err
		}
		conf, err := ourConf(list)
		if err != nil {
			return nil, err
		}
		rt := &libcni.RuntimeConf{ContainerID: sandboxID, NetNS: a.NetNS, IfName: a.IfName}
		res, err := m.cni.GetNetworkListCachedResult(list, rt)
		if err != nil {
			return nil, err
		}
		if res == nil {
			break
		}
		return m.attachment(list, conf, rt, res)
	}
	return nil, fmt.Errorf("sandbox %s: no cached network attachment: %w", sandboxID, os.ErrNotExist)
}

// GC removes every attachment of a sandbox not in live: libcni DELs its
// cached attachments (also those of an older configuration), then each
// plugin's GC (CNI 1.1) removes what was never cached (taps, IPAM
// reservations, NAT rules left by a crash).
func (m *Manager) GC(ctx context.Context, live []string) error {
	alive := map[string]bool{}
	valid := make([]types.GCAttachment, 0, len(live))
	for _, id := range live {
		alive[id] = true
		valid = append(valid, types.GCAttachment{ContainerID: id, IfName: m.cfg.IfName})
	}
	var errs []error
	list, lerr := m.Load()
	cached, err := m.cni.GetCachedAttachments("")
	if err != nil {
		errs = append(errs, fmt.Errorf("network cache: %w", err))
	}
	for _, a := range cached {
		if alive[a.ContainerID] || (lerr == nil && a.Network == list.Name) {
			continue // the current network's are GCNetworkList's
		}
		old, err := libcni.NetworkConfFromBytes(a.Config)
		if err != nil {
			errs = append(errs, fmt.Errorf("cached network %q of %s: %w", a.Network, a.ContainerID, err))
			continue
		}
		rt := &libcni.RuntimeConf{ContainerID: a.ContainerID, NetNS: a.NetNS, IfName: a.IfName, Args: a.CniArgs, CapabilityArgs: a.CapabilityArgs}
		if err := m.cni.DelNetworkList(ctx, old, rt); err != nil {
			errs = append(errs, fmt.Errorf("network %q: delete stale %s: %s", a.Network, a.ContainerID, describe(err)))
		}
	}
	if lerr != nil {
		var se *StatusError
		if errors.As(lerr, &se) && se.Reason == ReasonNoConfig {
			return errors.Join(errs...) // nothing configured: nothing more to collect
		}
		return errors.Join(append(errs, lerr)...)
	}
	if err := m.cni.GCNetworkList(ctx, list, &libcni.GCArgs{ValidAttachments: valid}); err != nil {
		errs = append(errs, fmt.Errorf("network %q: GC: %s", list.Name, describe(err)))
	}
	return errors.Join(errs...)
}

// attachment reads the final result.
func (m *Manager) attachment(list *libcni.NetworkConfigList, conf *netplugin.NetConf, rt *libcni.RuntimeConf, r types.Result) (*Attachment, error) {
	res, err := current.NewResultFromResult(r)
	if err != nil {
		return nil, fmt.Errorf("result: %w", err)
	}
	a := &Attachment{Network: list.Name, IfName: rt.IfName, Result: res}

	guest := -1
	for i, ifc := range res.Interfaces {
		if ifc.Sandbox != "" && ifc.Name == rt.IfName {
			guest = i
			break
		}
	}
	if guest < 0 {
		return nil, fmt.Errorf("result has no guest interface %s (an interface with that name and a sandbox)", rt.IfName)
	}
	gi := res.Interfaces[guest]
	mac, err := net.ParseMAC(gi.Mac)
	if err != nil {
		return nil, fmt.Errorf("result: guest interface %s: MAC %q: %v", gi.Name, gi.Mac, err)
	}
	a.MAC, a.MTU = mac.String(), gi.Mtu

	switch conf.Mode {
	case netplugin.ModeBridgeTap:
		a.Kind = vm.NICTap
		tap := netplugin.TapName(list.Name, rt.ContainerID, rt.IfName)
		for _, ifc := range res.Interfaces {
			if ifc.Name == tap && ifc.Sandbox == "" {
				a.Device = tap
			}
		}
		if a.Device == "" {
			return nil, fmt.Errorf("result has no tap %s", tap)
		}
		a.PortMappingsHandled = hasCapability(list, "portMappings")
	case netplugin.ModeVmnetNAT:
		a.Kind = vm.NICVmnetNAT
	case netplugin.ModeVmnetBridged:
		a.Kind, a.Device = vm.NICVmnetBridged, conf.Interface
	case netplugin.ModeSocket:
		a.Kind, a.Device, a.LAN = vm.NICSocket, conf.Socket, conf.LAN
		if gi.SocketPath != "" {
			a.Device = gi.SocketPath
		}
	default:
		return nil, fmt.Errorf("network %q: unknown mode %q", list.Name, conf.Mode)
	}
	if conf.Mode != netplugin.ModeBridgeTap {
		if a.Subnet, a.Gateway, err = conf.GuestSubnet(); err != nil {
			return nil, fmt.Errorf("network %q: %s", list.Name, describe(err))
		}
	}

	gw4, gw6 := net.IP(nil), net.IP(nil)
	for _, ipc := range res.IPs {
		if ipc.Interface != nil && *ipc.Interface != guest {
			continue
		}
		a.IPs = append(a.IPs, IPConfig{Address: ipc.Address, Gateway: ipc.Gateway})
		if ipc.Gateway != nil {
			if ipc.Gateway.To4() != nil && gw4 == nil {
				gw4 = ipc.Gateway
			} else if ipc.Gateway.To4() == nil && gw6 == nil {
				gw6 = ipc.Gateway
			}
		}
	}
	for _, r := range res.Routes {
		gw := r.GW
		if gw == nil {
			if r.Dst.IP.To4() != nil {
				gw = gw4
			} else {
				gw = gw6
			}
		}
		a.Routes = append(a.Routes, Route{Dst: r.Dst, GW: gw})
	}
	a.DNS = DNS{Servers: res.DNS.Nameservers, Searches: res.DNS.Search, Options: res.DNS.Options, Domain: res.DNS.Domain}
	return a, nil
}

// DefaultConflist is the network configuration macvz proposes for a
// platform ("linux" or "darwin") when the operator has written none: on
// Linux bridge-tap on macvz0 with host-local on 10.88.0.0/16, hostPorts
// by DNAT; on macOS mac's mode (netplugin.DefaultMacNetwork: socket on
// socket_vmnet's shared network when it is installed, else vmnet-nat;
// hostPorts are the daemon's proxy). `macvz config network` prints it for
// the host it runs on; write it to <ConfDir>/10-macvz.conflist.
func DefaultConflist(goos string, mac netplugin.MacNetwork) []byte {
	if goos == "darwin" {
		mode := `"mode": "vmnet-nat"`
		if mac.Mode == netplugin.ModeSocket {
			path, _ := json.Marshal(mac.Socket) // a string always marshals
			mode = `"mode": "socket",
      "socket": ` + string(path)
		}
		return []byte(`{
  "cniVersion": "1.1.0",
  "name": "macvz",
  "plugins": [
    {
      "type": "macvz-net",
      ` + mode + `,
      "capabilities": {"dns": true, "mac": true}
    }
  ]
}
`)
	}
	return []byte(`{
  "cniVersion": "1.1.0",
  "name": "macvz",
  "plugins": [
    {
      "type": "macvz-net",
      "mode": "bridge-tap",
      "bridge": "macvz0",
      "ipam": {
        "type": "host-local",
        "ranges": [[{"subnet": "10.88.0.0/16"}]],
        "routes": [{"dst": "0.0.0.0/0"}]
      },
      "capabilities": {"portMappings": true, "dns": true, "mac": true}
    }
  ]
}
`)
}

package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"text/template"
	"time"

	"github.com/containerd/errdefs"
	"github.com/pelletier/go-toml/v2"
)

// DefaultPath is where `macvz serve` looks for its configuration.
const DefaultPath = "/etc/macvz/config.toml"

// maxWarmPool bounds vm.warm_pool: each pooled VM holds memory and a VM
// slot while it waits.
const maxWarmPool = 8

// Default is the configuration used for every key the file does not set.
func Default() *Config {
	return &Config{
		Root:         "/var/lib/macvz",
		State:        "/var/run/macvz",
		Socket:       "/var/run/macvz/macvz.sock",
		Backend:      DefaultBackend,
		CgroupDriver: "auto",
		Log:          Log{Level: "info", Format: "text"},
		Registry: Registry{
			Hosts: map[string]Host{},
		},
		Image: Image{MaxConcurrentDownloads: 4, MaxUnpackedSize: 200 << 30},
		VM: VM{
			DefaultCPUs:        1,
			DefaultMemoryBytes: 512 << 20,
			BootTimeout:        Duration(2 * time.Minute),
			WarmStart:          true,
			WarmStates:         4,
			ConsoleLogMaxBytes: 8 << 20,
			MaxMacOSVMs:        2,
		},
		QEMU:            QEMU{Binary: "qemu-system-x86_64", Accel: "auto"},
		VZ:              VZ{MachineIdentifier: "fresh", VolumeRoots: []string{"/var/lib/kubelet/pods"}},
		Network:         Network{ConfDir: "/etc/macvz/net.d", BinDirs: []string{"/opt/macvz/bin"}},
		Stream:          Stream{Address: "127.0.0.1", Port: "0", IdleTimeout: Duration(4 * time.Hour)},
		Tracing:         Tracing{SamplingRatio: 1, ServiceName: "macvz"},
		Kubelet:         Kubelet{DevicePlugin: true, DevicePluginDir: "/var/lib/kubelet/device-plugins"},
		Node:            Node{Network: DefaultNodeNetwork, KubeletArgs: []string{}, Ports: []int{10250}, Shares: []string{"/var/lib/kubelet/pods", "/var/log/pods", "/var/log/containers", "/etc/kubernetes"}},
		RuntimeHandlers: map[string]RuntimeHandler{},
	}
}

// Load reads path over the defaults. A missing file at the default path
// means "all defaults"; a missing file that was asked for explicitly is an
// error, so a typo in --config never silently runs with defaults.
func Load(path string, explicit bool) (*Config, error) {
	f, err := os.Open(path)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) && !explicit {
			return Default(), nil
		}
		return nil, fmt.Errorf("config: %w", err)
	}
	defer f.Close()
	cfg, err := Decode(f)
	if err != nil {
		return nil, fmt.Errorf("config %s: %w", path, err)
	}
	return cfg, nil
}

// Decode reads a TOML configuration over the defaults. Unknown keys are
// errors: a misspelt key would otherwise be ignored without a word.
func Decode(r io.Reader) (*Config, error) {
	cfg := Default()
	dec := toml.NewDecoder(r).DisallowUnknownFields()
	if err := dec.Decode(cfg); err != nil {
		var sm *toml.StrictMissingError
		if errors.As(err, &sm) {
			return nil, fmt.Errorf("%w: %s", errdefs.ErrInvalidArgument, strings.TrimSpace(sm.String()))
		}
		var de *toml.DecodeError
		if errors.As(err, &de) {
			row, col := de.Position()
			return nil, fmt.Errorf("%w: line %d column %d: %s", errdefs.ErrInvalidArgument, row, col, de.Error())
		}
		return nil, fmt.Errorf("%w: %v", errdefs.ErrInvalidArgument, err)
	}
	if cfg.Registry.Hosts == nil {
		cfg.Registry.Hosts = map[string]Host{}
	}
	if cfg.RuntimeHandlers == nil {
		cfg.RuntimeHandlers = map[string]RuntimeHandler{}
	}
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	return cfg, nil
}

// Validate reports the first setting that cannot work, naming its key.
func (c *Config) Validate() error {
	bad := func(key, format string, args ...any) error {
		return fmt.Errorf("%w: %s: %s", errdefs.ErrInvalidArgument, key, fmt.Sprintf(format, args...))
	}
	for key, p := range map[string]string{"root": c.Root, "state": c.State, "socket": c.Socket} {
		if !filepath.IsAbs(p) {
			return bad(key, "must be an absolute path, got %q", p)
		}
	}
	switch c.Backend {
	case "qemu", "vz":
	default:
		return bad("backend", "must be \"qemu\" or \"vz\", got %q", c.Backend)
	}
	switch c.CgroupDriver {
	case "auto", "systemd", "cgroupfs":
	default:
		return bad("cgroup_driver", "must be auto, systemd or cgroupfs, got %q", c.CgroupDriver)
	}
	switch c.Log.Level {
	case "debug", "info", "warn", "error":
	default:
		return bad("log.level", "must be debug, info, warn or error, got %q", c.Log.Level)
	}
	switch c.Log.Format {
	case "text", "json":
	default:
		return bad("log.format", "must be text or json, got %q", c.Log.Format)
	}
	if net.ParseIP(c.Stream.Address) == nil {
		return bad("stream.address", "must be an IP address, got %q", c.Stream.Address)
	}
	if p, err := strconv.ParseUint(c.Stream.Port, 10, 16); err != nil || (p == 0 && c.Stream.Port != "0") {
		return bad("stream.port", "must be a port number (0 = any free port), got %q", c.Stream.Port)
	}
	if c.Stream.IdleTimeout <= 0 {
		return bad("stream.idle_timeout", "must be positive")
	}
	if a := c.Metrics.Address; a != "" {
		host, port, err := net.SplitHostPort(a)
		if err != nil || net.ParseIP(host) == nil {
			return bad("metrics.address", "must be IP:port (\"127.0.0.1:9102\", \"[::1]:9102\"; \"\" = off), got %q", a)
		}
		if _, err := strconv.ParseUint(port, 10, 16); err != nil {
			return bad("metrics.address", "must be IP:port with a port number (0 = any free port), got %q", a)
		}
	}
	if e := c.Tracing.Endpoint; e != "" {
		u, err := url.Parse(e)
		if err != nil {
			// Not quoted: the text may hold a password.
			return bad("tracing.endpoint", "is not a URL; it must be the OTLP/HTTP collector's (\"http://127.0.0.1:4318\"; \"\" = off)")
		}
		if (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return bad("tracing.endpoint", "must be the OTLP/HTTP collector's URL (\"http://127.0.0.1:4318\"; \"\" = off), got %q", u.Redacted())
		}
		if u.User != nil {
			// The URL is logged (and the exporter's errors quote it).
			return bad("tracing.endpoint", "must not carry credentials (%s): give them as headers in OTEL_EXPORTER_OTLP_HEADERS", u.Redacted())
		}
	}
	if r := c.Tracing.SamplingRatio; !(r >= 0 && r <= 1) {
		return bad("tracing.sampling_ratio", "must be between 0 and 1, got %v", r)
	}
	if c.Tracing.ServiceName == "" {
		return bad("tracing.service_name", "must not be empty")
	}
	if !filepath.IsAbs(c.Network.ConfDir) {
		return bad("network.conf_dir", "must be an absolute path, got %q", c.Network.ConfDir)
	}
	if len(c.Network.BinDirs) == 0 {
		return bad("network.bin_dirs", "must name at least one directory")
	}
	for _, d := range c.Network.BinDirs {
		if !filepath.IsAbs(d) {
			return bad("network.bin_dirs", "must be absolute paths, got %q", d)
		}
	}
	if c.Network.CacheDir != "" && !filepath.IsAbs(c.Network.CacheDir) {
		return bad("network.cache_dir", "must be an absolute path or empty, got %q", c.Network.CacheDir)
	}
	if t := c.Network.ConfTemplate; t != "" {
		if !filepath.IsAbs(t) {
			return bad("network.conf_template", "must be an absolute path or empty, got %q", t)
		}
		if _, err := ParseConfTemplate(t); err != nil {
			return bad("network.conf_template", "%v", err)
		}
	}
	if c.Image.MaxConcurrentDownloads < 1 {
		return bad("image.max_concurrent_downloads", "must be at least 1, got %d", c.Image.MaxConcurrentDownloads)
	}
	if c.Image.MaxUnpackedSize < 1<<20 {
		return bad("image.max_unpacked_size", "must be at least 1 MiB (1048576), got %d", c.Image.MaxUnpackedSize)
	}
	if c.VM.DefaultCPUs < 1 {
		return bad("vm.default_cpus", "must be at least 1, got %d", c.VM.DefaultCPUs)
	}
	if c.VM.DefaultMemoryBytes < 64<<20 {
		return bad("vm.default_memory_bytes", "must be at least 64 MiB, got %d", c.VM.DefaultMemoryBytes)
	}
	if c.VM.BootTimeout <= 0 {
		return bad("vm.boot_timeout", "must be positive")
	}
	if c.VM.MaxMacOSVMs < 0 || c.VM.MaxLinuxVMs < 0 {
		return bad("vm.max_macos_vms/max_linux_vms", "must be 0 (no bound) or more")
	}
	if c.VM.MaxConcurrentBoots < -1 {
		return bad("vm.max_concurrent_boots", "must be -1 (no bound), 0 (the host's CPU count) or more, got %d", c.VM.MaxConcurrentBoots)
	}
	if c.VM.ConsoleLogMaxBytes < 64<<10 {
		return bad("vm.console_log_max_bytes", "must be at least 65536, got %d", c.VM.ConsoleLogMaxBytes)
	}
	if c.VM.WarmStates < 1 {
		return bad("vm.warm_states", "must be at least 1 (turn warm starts off with vm.warm_start = false), got %d", c.VM.WarmStates)
	}
	if c.VM.WarmPool < 0 || c.VM.WarmPool > maxWarmPool {
		return bad("vm.warm_pool", "must be 0 (none) to %d, got %d", maxWarmPool, c.VM.WarmPool)
	}
	if c.VM.WarmPool > 0 && !c.VM.WarmStart {
		return bad("vm.warm_pool", "keeps VMs restored from saved states: it needs vm.warm_start = true")
	}
	if c.Node.Enabled && c.Node.Image == "" {
		return bad("node.image", "the node VM needs a node image (make node-image)")
	}
	for _, p := range c.Node.Shares {
		if !filepath.IsAbs(p) || filepath.Clean(p) != p || p == "/" {
			return bad("node.shares", "%q: want absolute, clean paths below /", p)
		}
	}
	if c.Node.CPUs < 0 || c.Node.MemoryBytes < 0 {
		return bad("node", "cpus and memory_bytes must not be negative")
	}
	if c.Node.LogDir != "" && !filepath.IsAbs(c.Node.LogDir) {
		return bad("node.log_dir", "must be an absolute path, got %q", c.Node.LogDir)
	}
	switch c.Node.Network {
	case NodeNetworkHost, NodeNetworkPod:
	default:
		return bad("node.network", "must be %s or %s, got %q", NodeNetworkHost, NodeNetworkPod, c.Node.Network)
	}
	if c.Node.NodeIP != "" && net.ParseIP(c.Node.NodeIP) == nil {
		return bad("node.node_ip", "not an IP address: %q", c.Node.NodeIP)
	}
	// The node VM takes the node's one address (kubelet's dual-stack
	// --node-ip pair is not supported there).
	if ip := c.Node.KubeletNodeIP(); ip != "" {
		if net.ParseIP(ip) == nil {
			return bad("node.kubelet_args", "--node-ip %q: the node VM needs one IP address", ip)
		}
		if c.Node.NodeIP != "" && !net.ParseIP(ip).Equal(net.ParseIP(c.Node.NodeIP)) {
			return bad("node.kubelet_args", "--node-ip %s differs from node.node_ip %s", ip, c.Node.NodeIP)
		}
	}
	for _, p := range c.Node.Ports {
		if p < 1 || p > 65535 {
			return bad("node.ports", "%d is not a TCP port", p)
		}
	}
	if c.Kubelet.DevicePlugin && !filepath.IsAbs(c.Kubelet.DevicePluginDir) {
		return bad("kubelet.device_plugin_dir", "must be an absolute path, got %q", c.Kubelet.DevicePluginDir)
	}
	switch c.QEMU.Accel {
	case "auto", "kvm", "tcg":
	default:
		return bad("qemu.accel", "must be auto, kvm or tcg, got %q", c.QEMU.Accel)
	}
	switch c.VZ.MachineIdentifier {
	case "fresh", "image":
	default:
		return bad("vz.machine_identifier", "must be fresh or image, got %q", c.VZ.MachineIdentifier)
	}
	for _, r := range c.VZ.VolumeRoots {
		if !filepath.IsAbs(r) || filepath.Clean(r) != r {
			return bad("vz.volume_roots", "%q must be an absolute, clean path", r)
		}
	}
	for name, h := range c.RuntimeHandlers {
		if name == "" {
			return bad("runtime_handlers", "\"\" is the default handler; configure it as [runtime_handlers.%s]", DefaultHandler)
		}
		switch h.Agent {
		case "", AgentRequired, AgentNone:
		default:
			return bad(fmt.Sprintf("runtime_handlers.%s.agent", name), "must be %q or %q, got %q", AgentRequired, AgentNone, h.Agent)
		}
		if name == DefaultHandler && h.VMImage != "" {
			return bad("runtime_handlers.macvz.vm_image", "the default handler boots no image at RunPodSandbox; give the image a handler of its own (RuntimeClass)")
		}
	}
	for host, h := range c.Registry.Hosts {
		if host == "" || strings.Contains(host, "/") {
			return bad("registry.hosts", "%q is not a registry host (host[:port], no scheme or path)", host)
		}
		for _, m := range h.Mirrors {
			if m == "" || strings.ContainsAny(m, "/") {
				return bad(fmt.Sprintf("registry.hosts.%q.mirrors", host), "%q must be host[:port] without a scheme or path; give it its own [registry.hosts] entry with insecure = true for plain HTTP", m)
			}
		}
	}
	return nil
}

// ParseConfTemplate reads and parses network.conf_template's file (a Go
// text/template). The daemon parses it again at every render, so an
// edited template is used without a restart.
func ParseConfTemplate(path string) (*template.Template, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	if len(bytes.TrimSpace(b)) == 0 {
		return nil, fmt.Errorf("%s is empty", path)
	}
	t, err := template.New(filepath.Base(path)).Option("missingkey=error").Parse(string(b))
	if err != nil {
		return nil, fmt.Errorf("%s: %v", path, err)
	}
	return t, nil
}

// Marshal renders c as TOML (without comments).
func (c *Config) Marshal() ([]byte, error) {
	var buf bytes.Buffer
	enc := toml.NewEncoder(&buf)
	enc.SetIndentTables(true)
	if err := enc.Encode(c); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// Duration is a time.Duration written as a string in TOML ("90s", "2m").
type Duration time.Duration

// UnmarshalText reads "1m30s".
func (d *Duration) UnmarshalText(b []byte) error {
	v, err := time.ParseDuration(string(b))
	if err != nil {
		return err
	}
	*d = Duration(v)
	return nil
}

// MarshalText writes the duration as "1m30s".
func (d Duration) MarshalText() ([]byte, error) { return []byte(time.Duration(d).String()), nil }

// String is the duration as Go prints it.
func (d Duration) String() string { return time.Duration(d).String() }

// ResolvePaths makes root and state and replaces them with their real
// paths. The default state dir, /var/run/macvz, is /run/macvz on most
// systems, and the kernel records mounts (/proc/self/mountinfo) under the
// resolved path: comparing an unresolved one with them misses every
// mount, and a removal then goes through binds that were never undone.
func (c *Config) ResolvePaths() error {
	for key, p := range map[string]*string{"root": &c.Root, "state": &c.State} {
		if err := os.MkdirAll(*p, 0o711); err != nil {
			return fmt.Errorf("%s: %w", key, err)
		}
		r, err := filepath.EvalSymlinks(*p)
		if err != nil {
			return fmt.Errorf("%s: %w", key, err)
		}
		*p = r
	}
	return nil
}

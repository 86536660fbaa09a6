// Package config is macvz's daemon configuration (/etc/macvz/config.toml).
package config

import "strings"

// Config is the whole daemon configuration. Field comments are the
// reference; `macvz config default` prints them with their defaults.
type Config struct {
	// Root holds persistent data: content store, image records, VM bases.
	Root string `toml:"root"`
	// State holds runtime state that does not survive a reboot: sockets.
	State string `toml:"state"`
	// Socket is the CRI gRPC unix socket.
	Socket string `toml:"socket"`
	// Backend is the VM driver: "qemu" (Linux) or "vz" (macOS).
	Backend string `toml:"backend"`
	// CgroupDriver is what the CRI RuntimeConfig call tells kubelet to
	// use for its own cgroups: "systemd", "cgroupfs", or "auto".
	CgroupDriver string `toml:"cgroup_driver"`

	Log      Log      `toml:"log"`
	Registry Registry `toml:"registry"`
	Image    Image    `toml:"image"`
	VM       VM       `toml:"vm"`
	QEMU     QEMU     `toml:"qemu"`
	VZ       VZ       `toml:"vz"`
	Network  Network  `toml:"network"`
	Stream   Stream   `toml:"stream"`
	Kubelet  Kubelet  `toml:"kubelet"`
	Node     Node     `toml:"node"`
	Metrics  Metrics  `toml:"metrics"`
	Tracing  Tracing  `toml:"tracing"`
	// RuntimeHandlers are the CRI runtime handlers (RuntimeClass
	// handlers) besides the default one ("" and "macvz"). An entry named
	// "macvz" configures the default handler; it may not set VMImage.
	RuntimeHandlers map[string]RuntimeHandler `toml:"runtime_handlers"`
}

// VM sizes and times sandboxes.
type VM struct {
	// DefaultCPUs and DefaultMemoryBytes size a VM whose pod sets no
	// limits or requests (never below the image's minimums).
	DefaultCPUs        int   `toml:"default_cpus"`
	DefaultMemoryBytes int64 `toml:"default_memory_bytes"`
	// BootTimeout bounds boot-to-agent-ready.
	BootTimeout Duration `toml:"boot_timeout"`
	// ConsoleLogMaxBytes is the size at which a VM's console log (and its
	// shim's and QEMU's logs) is rotated; one old file is kept.
	ConsoleLogMaxBytes int64 `toml:"console_log_max_bytes"`
	// WarmStart saves a VM's state at its first boot on this host and
	// restores later sandboxes of the same VM (image, size) from it.
	WarmStart bool `toml:"warm_start"`
	// WarmStates is how many saved states are kept (least recently used
	// go first).
	WarmStates int `toml:"warm_states"`
	// WarmPool is how many VMs restored from each saved state are kept
	// ready for the next sandboxes of that VM (Linux guests on QEMU);
	// 0 = none.
	WarmPool int `toml:"warm_pool"`
	// MaxMacOSVMs and MaxLinuxVMs bound the VMs of each guest OS running
	// (or booting) at once; 0 = no bound. Apple's license and
	// Virtualization.framework allow two macOS guests per host.
	MaxMacOSVMs int `toml:"max_macos_vms"`
	MaxLinuxVMs int `toml:"max_linux_vms"`
	// MaxConcurrentBoots bounds the cold boots in progress at once: 0 =
	// the host's CPU count, -1 = no bound. Restores never wait.
	MaxConcurrentBoots int `toml:"max_concurrent_boots"`
}

// VZ configures the vz backend (macOS guests on macOS).
type VZ struct {
	// MachineIdentifier is "fresh" (each sandbox's VM gets a new one) or
	// "image" (the image's own, for guests licensed to one identity).
	// Two VMs running with one identifier conflict.
	MachineIdentifier string `toml:"machine_identifier"`
	// VolumeRoots are kubelet's pods directories as the host sees them
	// (the node VM shares them at the same path). A macOS host has no
	// bind mounts and a vz VM's shares are fixed at boot, so a pod's VM
	// boots with a share of the pod's own volume directories below them
	// (<root>/<pod UID>/volumes/<plugin>/<name>), never a whole pod
	// directory nor its termination logs. Unused where the host has bind
	// mounts (Linux).
	VolumeRoots []string `toml:"volume_roots"`
}

// QEMU configures the qemu backend.
type QEMU struct {
	// Binary is the qemu-system executable.
	Binary string `toml:"binary"`
	// Accel is "auto" (kvm when /dev/kvm opens, else tcg), "kvm" or "tcg".
	Accel string `toml:"accel"`
}

// Network is the pod network: a CNI configuration run with libcni.
type Network struct {
	// ConfDir holds the CNI configuration (*.conflist, *.conf, *.json);
	// the first file in name order is used unless Name picks one.
	ConfDir string `toml:"conf_dir"`
	// BinDirs are searched for the plugins (macvz-net, host-local, any
	// chained plugin).
	BinDirs []string `toml:"bin_dirs"`
	// CacheDir is libcni's result cache; "" = <root>/cni.
	CacheDir string `toml:"cache_dir"`
	// Name picks the configuration whose "name" is this; "" = the first.
	Name string `toml:"name"`
	// ConfTemplate is a CNI conflist template (Go text/template; "" =
	// none), containerd's conf_template: when kubelet sends the node's pod
	// CIDRs (CRI UpdateRuntimeConfig), the daemon renders it into
	// <conf_dir>/10-macvz.conflist. Its data are .PodCIDR (the first
	// CIDR), .PodCIDRRanges (all of them) and .Routes ("0.0.0.0/0" and/or
	// "::/0", one per family present).
	ConfTemplate string `toml:"conf_template"`
}

// Stream is the streaming server that carries exec, attach and
// port-forward sessions (kubelet proxies `kubectl exec` to its URLs).
type Stream struct {
	// Address and Port it listens on; port "0" picks a free one.
	Address string `toml:"address"`
	Port    string `toml:"port"`
	// IdleTimeout ends a session without traffic after this long.
	IdleTimeout Duration `toml:"idle_timeout"`
}

// Metrics is the daemon's Prometheus endpoint (cri/opmetrics): CRI calls,
// pulls, VM boots and slots, warm states, shims and agent calls, for the
// operator's monitoring. Off by default: what it serves (pod and VM
// counts, call rates and failures, the daemon's memory) is operational
// data about the node, and it has no authentication, so it is opened only
// where the operator asks, normally on loopback for a local scraper.
type Metrics struct {
	// Address is host:port for /metrics over plain HTTP ("" = off; port 0
	// = any free port, which `crictl info` shows).
	Address string `toml:"address"`
}

// Tracing sends OpenTelemetry spans to an OTLP collector: one for each
// CRI call (continuing the caller's trace when it sends a W3C
// traceparent, as kubelet does with its tracing on) and, under the call
// that boots a VM, one for the boot with a child for each of its phases
// (the disk clone and spec, the shim, the VM process, the guest kernel,
// the agent's start, its first answer, a warm state's save, the guest's
// setup), the same phases the "VM booted" log line gives. Off by default.
type Tracing struct {
	// Endpoint is the collector's OTLP/HTTP URL, e.g.
	// "http://127.0.0.1:4318": spans go to its /v1/traces, or to the
	// URL's own path when it has one. "" = off. The OTEL_EXPORTER_OTLP_* variables (headers, TLS files,
	// timeout) apply too.
	Endpoint string `toml:"endpoint"`
	// SamplingRatio is the share of new traces recorded, 0 to 1; a call
	// that continues its caller's trace follows the caller's decision.
	SamplingRatio float64 `toml:"sampling_ratio"`
	// ServiceName is the spans' service.name.
	ServiceName string `toml:"service_name"`
}

// Kubelet is how the daemon shows kubelet its VM slots.
type Kubelet struct {
	// DevicePlugin registers the extended resources macvz.io/macos-vm
	// (backend vz, vm.max_macos_vms > 0) and macvz.io/linux-vm
	// (vm.max_linux_vms > 0) with kubelet's device-plugin API, one device
	// per VM slot, so the scheduler sends a pod that asks for one only to
	// a node with a free slot (cri/deviceplugin). Without kubelet it
	// waits quietly for kubelet's socket.
	DevicePlugin bool `toml:"device_plugin"`
	// DevicePluginDir is kubelet's device-plugin directory (its
	// kubelet.sock; the plugins' sockets are made there, mode 0600).
	// kubelet's pod-resources socket is read at
	// <device_plugin_dir>/../pod-resources/kubelet.sock.
	DevicePluginDir string `toml:"device_plugin_dir"`
}

// RuntimeHandler is one named runtime handler.
type RuntimeHandler struct {
	// VMImage, when set, boots every sandbox of this handler from this
	// image at RunPodSandbox, before any container is created.
	VMImage string `toml:"vm_image"`
	// AllowVolumeDirsAnnotation honours the pod annotation
	// macvz.io/volume-dirs (a JSON array of host directories added to a
	// vz VM's volume share, for volumes outside kubelet's pod
	// directories: crictl's). Any pod author could share any host
	// directory with their VM, so it is off unless the handler's pod
	// authors are trusted; a pod that sets it anyway fails with
	// FailedPrecondition.
	AllowVolumeDirsAnnotation bool `toml:"allow_volume_dirs_annotation"`
	// AllowVMImageAnnotation honours the pod annotation macvz.io/vm-image
	// (boot that image at RunPodSandbox). The image is used as present on
	// the node, past the kubelet's image admission (AlwaysPullImages, pull
	// secrets), so it is off unless the operator trusts the handler's pod
	// authors; a pod that sets it anyway fails with FailedPrecondition.
	AllowVMImageAnnotation bool `toml:"allow_vm_image_annotation"`
	// Agent is "required" (or empty): a VM boots until its macvz agent
	// answers; or "none": the handler's images have no agent (a stock
	// Tart image), a VM is ready once it runs, and only the VM itself
	// container works. A pod asks for the same with the annotation
	// macvz.io/agent: none.
	Agent string `toml:"agent"`
}

// Agent values of a runtime handler and of the macvz.io/agent annotation.
const (
	AgentRequired = "required"
	AgentNone     = "none"
)

// DefaultHandler is the name of the default runtime handler (the CRI's
// "" means it too).
const DefaultHandler = "macvz"

// Log configures the daemon's log/slog output.
type Log struct {
	Level  string `toml:"level"`  // debug, info, warn, error
	Format string `toml:"format"` // text or json
}

// Registry configures how images are fetched.
type Registry struct {
	// Hosts maps a registry host as written in image references
	// ("docker.io", "registry.k8s.io", "localhost:5000") to its settings.
	Hosts map[string]Host `toml:"hosts"`
}

// Host is the configuration of one registry host.
type Host struct {
	// Mirrors are tried in order before the host itself, each as
	// "host[:port]" (scheme from Insecure of that mirror's own entry, or
	// https).
	Mirrors []string `toml:"mirrors"`
	// Insecure allows plain HTTP to this host. Never implied.
	Insecure bool `toml:"insecure"`
	// SkipVerify disables TLS certificate verification for this host.
	SkipVerify bool `toml:"skip_verify"`
}

// Image configures pulls.
type Image struct {
	// MaxConcurrentDownloads bounds the blobs fetched at once per pull.
	MaxConcurrentDownloads int `toml:"max_concurrent_downloads"`
	// MaxUnpackedSize caps the bytes one VM image unpacks to (its disk
	// counted at its full size, holes included); a pull of a bigger image
	// fails.
	MaxUnpackedSize int64 `toml:"max_unpacked_size"`
	// KeepDiskChunks keeps a VM image's compressed disk chunks after its
	// disk is unpacked and verified (containerd's discard_unpacked_layers,
	// inverted); false releases them, and a Tart image's chunks are not
	// stored at all (they stream into the unpacker; an interrupted pull
	// resumes by chunk).
	KeepDiskChunks bool `toml:"keep_disk_chunks"`
}

// Node is the node VM (runtime/nodevm): a Linux VM the daemon boots from
// a node image, in which the unmodified kubelet runs and reaches this
// daemon's CRI over the VM's private channel. A Mac joins a cluster so.
type Node struct {
	// Enabled starts the node VM with the daemon.
	Enabled bool `toml:"enabled"`
	// Image is the node image (make node-image).
	Image string `toml:"image"`
	// KubeletArgs are kubelet's flags (--config, --kubeconfig, ...); the
	// daemon adds the CRI endpoints. Paths in them must be under Shares.
	KubeletArgs []string `toml:"kubelet_args"`
	// Shares are host directories mounted in the node VM at the same
	// path: kubelet's pods/ (its volumes; the root dir itself is a tmpfs
	// in the VM, which cAdvisor knows), the pod log directories, its
	// configuration and PKI.
	Shares []string `toml:"shares"`
	// CPUs and MemoryBytes size the node VM; 0 = the host's, so that the
	// node reports the host's capacity (guest memory is allocated as it
	// is touched).
	CPUs        int   `toml:"cpus"`
	MemoryBytes int64 `toml:"memory_bytes"`
	// LogDir holds kubelet's log ("" = <state>/node).
	LogDir string `toml:"log_dir"`
	// Network is the node VM's network: NodeNetworkHost, the
	// hypervisor's NAT (kubelet's connections come from the host), or
	// NodeNetworkPod, the pod network through the CNI plugin like any
	// pod (kubelet reaches pod IPs directly). On a Mac the default is
	// "pod": VMs on vz's NAT cannot reach each other, so kubelet's
	// probes of pod IPs would fail from the NAT.
	Network string `toml:"network"`
	// NodeIP is the node's address, the one kubelet reports (its
	// --node-ip, which the daemon passes): the host's, since the node VM
	// has only a NAT or pod address. "" = the --node-ip of kubelet_args,
	// else the host's address on its default route.
	NodeIP string `toml:"node_ip"`
	// Ports are kubelet's TCP ports (its API, 10250) forwarded from
	// NodeIP on the host into the node VM, so the API server reaches it;
	// only when kubelet joins a cluster (a --kubeconfig in KubeletArgs).
	// On the pod network they are the node VM's hostPorts.
	Ports []int `toml:"ports"`
}

// The node VM's networks (Node.Network).
const (
	NodeNetworkHost = "host"
	NodeNetworkPod  = "pod"
)

// KubeletNodeIP is the value of --node-ip in KubeletArgs ("" if absent).
func (n Node) KubeletNodeIP() string {
	v, _ := n.kubeletFlag("node-ip")
	return v
}

// JoinsCluster reports whether kubelet has a kubeconfig (or a bootstrap
// one): a standalone kubelet has no API server to dial it.
func (n Node) JoinsCluster() bool {
	_, ok := n.kubeletFlag("kubeconfig")
	_, boot := n.kubeletFlag("bootstrap-kubeconfig")
	return ok || boot
}

// kubeletFlag finds --name (or -name) in KubeletArgs, with its value
// joined by "=" or next.
func (n Node) kubeletFlag(name string) (string, bool) {
	for i, a := range n.KubeletArgs {
		f, val, hasVal := strings.Cut(strings.TrimLeft(a, "-"), "=")
		if !strings.HasPrefix(a, "-") || f != name {
			continue
		}
		if !hasVal && i+1 < len(n.KubeletArgs) {
			val = n.KubeletArgs[i+1]
		}
		return val, true
	}
	return "", false
}

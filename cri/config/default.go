package config

import (
	"bytes"
	"text/template"
)

// defaultTemplate is `macvz config default`: every key with its default
// and what it means. config_test.go decodes it back and compares with
// Default(), so the text and the code cannot drift apart.
var defaultTemplate = template.Must(template.New("config").Parse(`# macvz daemon configuration ({{.Path}}).
# Every key is shown with its default; delete what you do not change.
# Unknown keys are an error, so a misspelt key is reported, not ignored.

# Persistent data: image content store, image records, VM disk bases and
# sandbox disk clones. Bases and clones must be on one file system that can
# clone files (APFS on macOS; XFS with reflink=1 or btrfs on Linux), or
# every sandbox start copies its whole disk.
root = "{{.C.Root}}"

# Runtime state that does not survive a reboot: per-VM shim sockets.
state = "{{.C.State}}"

# The CRI v1 gRPC socket kubelet and crictl connect to
# (--container-runtime-endpoint unix://<socket>). Created mode 0660, owned
# by the daemon's user (root).
socket = "{{.C.Socket}}"

# VM driver: "vz" (Virtualization.framework, macOS guests on macOS) or
# "qemu" (Linux guests under qemu-system-x86_64 on Linux).
backend = "{{.C.Backend}}"

# The cgroup driver kubelet is told to use for its own cgroups (CRI
# RuntimeConfig; kubelet 1.37 still falls back to its own cgroupDriver when a
# runtime does not implement the call, a fallback marked to go in 1.38). Pods
# are VMs, so macvz itself puts nothing in a host cgroup; this only has to
# match how the host's kubelet should manage cgroups. "auto" answers systemd
# when the host runs systemd (/run/systemd/system exists), else cgroupfs.
cgroup_driver = "{{.C.CgroupDriver}}"

[log]
  # debug, info, warn or error.
  level = "{{.C.Log.Level}}"
  # text (logfmt-style key=value) or json.
  format = "{{.C.Log.Format}}"

[image]
  # Blobs (layers, disk chunks) fetched at once by one pull.
  max_concurrent_downloads = {{.C.Image.MaxConcurrentDownloads}}
  # The most bytes one VM image may unpack to, in all its files, a disk
  # counted at its full size (its holes included). Registries are not
  # trusted: a pull of an image whose manifest announces more fails before
  # its layers download, and one whose layers decode to more (a
  # decompression bomb) stops there. Default 200 GiB. Pulls also stop when
  # the file system of the VM bases would keep less than 1 GiB (or 2% of
  # a small one) free.
  max_unpacked_size = {{.C.Image.MaxUnpackedSize}}
  # Keep a VM image's compressed disk chunks after its disk is unpacked
  # and verified. Off: they are released (a macOS image would otherwise
  # keep tens of GB of chunks no one reads), and a re-pull of the image
  # fetches only what is not its disk.
  keep_disk_chunks = {{.C.Image.KeepDiskChunks}}

[vm]
  # Size of a VM whose pod sets no CPU/memory limits or requests. A pod's
  # limits (requests where no limit is set), summed over its containers,
  # size its VM otherwise; never below the image's minimums.
  default_cpus = {{.C.VM.DefaultCPUs}}
  default_memory_bytes = {{.C.VM.DefaultMemoryBytes}}
  # How long a VM may take from boot to an answering guest agent.
  boot_timeout = "{{.C.VM.BootTimeout}}"
  # The guest decides how much it prints on its console: <sandbox
  # dir>/console.log is rotated to console.log.1 at this size (one old file
  # is kept).
  console_log_max_bytes = {{.C.VM.ConsoleLogMaxBytes}}
  # Warm start: the first boot of a VM (image and size) on this host saves
  # the VM's state once its agent answers (the VM pauses for that), with a
  # copy-on-write clone of its disk; later sandboxes of that VM restore the
  # state instead of booting, then get their own MAC, addresses, hostname,
  # DNS and mounts. A restore that fails drops the state and boots cold.
  # States live under <root>/warm; each is about the memory the guest had
  # touched when saved. macOS guests keep one state per VM slot, each with
  # the slot's own MAC and machine identifier (see the README).
  warm_start = {{.C.VM.WarmStart}}
  # How many saved states to keep; the least recently used go first.
  warm_states = {{.C.VM.WarmStates}}
  # How many VMs restored from each saved state to keep ready (Linux guests
  # on QEMU): a sandbox of that VM then takes one whose guest already runs,
  # with its shared directories mounted and its process machinery warmed
  # up, instead of restoring one. Each holds its memory (what the guest had
  # touched, shared copy-on-write with the saved state) and counts against
  # max_linux_vms; 0 = none. Filled after a sandbox of the VM booted.
  warm_pool = {{.C.VM.WarmPool}}
  # How many VMs of each guest OS may run (or boot) at once; 0 = no bound.
  # Virtualization.framework runs at most two macOS guests per host (Apple's
  # license allows two): a third sandbox gets ResourceExhausted naming the
  # two that run, and kubelet retries. Give such nodes maxPods: 2.
  max_macos_vms = {{.C.VM.MaxMacOSVMs}}
  max_linux_vms = {{.C.VM.MaxLinuxVMs}}
  # How many VMs may boot cold at once; the next ones wait their turn (a
  # restore from a saved state never waits). A cold boot keeps a core busy
  # until the guest's agent answers, and more boots than cores slow each
  # other down: 10 pods started at once on 2 cores finish sooner two at a
  # time. 0 = the host's CPU count, -1 = no bound.
  max_concurrent_boots = {{.C.VM.MaxConcurrentBoots}}

[qemu]
  # The qemu backend (Linux guests on Linux).
  binary = "{{.C.QEMU.Binary}}"
  # "auto" uses kvm when /dev/kvm can be opened, else tcg (software
  # emulation, slow but works everywhere). Set "tcg" where /dev/kvm exists
  # but does not work (nested or paravirtualised hosts).
  accel = "{{.C.QEMU.Accel}}"

[vz]
  # The vz backend (macOS guests on macOS). Each sandbox's VM gets its own
  # copy of the image's auxiliary storage (NVRAM) and, with "fresh", its own
  # machine identifier; "image" keeps the image's (two VMs running with one
  # identifier conflict).
  machine_identifier = "{{.C.VZ.MachineIdentifier}}"
  # A Mac has no bind mounts and a vz VM's shares are fixed when it boots,
  # so each pod VM boots with one more virtiofs share whose entries are the
  # pod's own volume directories below these roots (kubelet's pods
  # directory, shared with the node VM at the same path):
  # <root>/<pod UID>/volumes/<plugin>/<name> (secrets, configMaps,
  # projected and downward API read-only); never a whole pod directory nor
  # the termination logs kubelet reads back. More host directories
  # come from the pod annotation macvz.io/volume-dirs (a JSON array of
  # absolute paths), honoured only for runtime handlers with
  # allow_volume_dirs_annotation = true (any pod author could otherwise
  # share any host directory); a volume below none of them fails with
  # FailedPrecondition. Unused on Linux hosts, which bind volumes.
  volume_roots = [{{range $i, $a := .C.VZ.VolumeRoots}}{{if $i}}, {{end}}"{{$a}}"{{end}}]

[network]
  # The pod network: a CNI configuration list whose first plugin is
  # macvz-net (bridge + tap on Linux, vmnet on macOS), run with libcni at
  # RunPodSandbox (ADD) and StopPodSandbox (DEL). Without one, NetworkReady
  # is false and only host-network pods run (their VMs get user-mode NAT).
  conf_dir = "{{.C.Network.ConfDir}}"
  bin_dirs = [{{range $i, $d := .C.Network.BinDirs}}{{if $i}}, {{end}}"{{$d}}"{{end}}]
  # libcni's cache of results ("" = <root>/cni).
  cache_dir = "{{.C.Network.CacheDir}}"
  # The configuration's "name" to use ("" = the first file in name order).
  name = "{{.C.Network.Name}}"
  # A CNI conflist template (Go text/template) for clusters whose
  # controller-manager gives each node its pod CIDR (containerd's
  # conf_template). kubelet sends the node's podCIDRs (CRI
  # UpdateRuntimeConfig) and the daemon renders the template into
  # <conf_dir>/10-macvz.conflist, rewriting it when they change; that file
  # must sort first in conf_dir, or name must pick its network. The
  # template sees .PodCIDR (the first CIDR), .PodCIDRRanges (all, for
  # dual stack) and .Routes ("0.0.0.0/0" and/or "::/0"). "" = none: the CIDR
  # is only recorded and conf_dir is left to the operator.
  conf_template = "{{.C.Network.ConfTemplate}}"

[stream]
  # The streaming server for exec, attach and port-forward (the URLs the
  # CRI returns; kubelet proxies to them). Keep it on loopback: it has no
  # authentication of its own, the one-time URLs are the only secret.
  address = "{{.C.Stream.Address}}"
  # "0" picks a free port at every start.
  port = "{{.C.Stream.Port}}"
  idle_timeout = "{{.C.Stream.IdleTimeout}}"

[kubelet]
  # Show kubelet the VM slots as extended resources through its device-plugin
  # API: macvz.io/macos-vm (backend vz, max_macos_vms > 0) and
  # macvz.io/linux-vm (max_linux_vms > 0), one device per slot. A pod asks
  # for one with resources.limits "macvz.io/macos-vm: 1" and the scheduler
  # sends it only to a node with a free slot. A slot held by a VM kubelet
  # did not allocate (a crictl pod, a pod that did not ask) makes one device
  # unhealthy, so allocatable drops with it (see the README). Without
  # kubelet the daemon waits quietly for its socket.
  device_plugin = {{.C.Kubelet.DevicePlugin}}
  # kubelet's device-plugin directory: kubelet.sock is there and the
  # plugins' sockets (macvz-macos-vm.sock, mode 0600) are made there.
  # kubelet's pod-resources API is read at ../pod-resources/kubelet.sock.
  device_plugin_dir = "{{.C.Kubelet.DevicePluginDir}}"

[metrics]
  # A Prometheus endpoint, http://<address>/metrics: CRI calls per method and
  # code, image pulls, VM boots (cold or warm), running VMs, VM-slot
  # refusals, warm-state hits and saves, shim reconnects, guest agent call
  # latency, and the Go and process collectors. "" = off. It has no
  # authentication and tells whoever reaches it how busy the node is and
  # what fails: keep it on loopback ("127.0.0.1:9102") unless the network
  # it listens on is the monitoring system's own. Port 0 picks a free port
  # at every start (crictl info shows it as "metrics").
  address = "{{.C.Metrics.Address}}"

[tracing]
  # OpenTelemetry spans, sent over OTLP/HTTP to a collector: one per CRI
  # call (continuing kubelet's trace when its tracing is on) and, under the
  # call that boots a VM, the boot with a child span per phase (disk clone
  # and spec, shim, VM process, guest kernel, agent start, its first answer,
  # warm-state save, guest setup). The collector's base URL
  # ("http://127.0.0.1:4318": spans go to its /v1/traces) or a full URL
  # with its own path; "" = off. The OTEL_EXPORTER_OTLP_*
  # variables (headers, certificates, timeout) apply too.
  endpoint = "{{.C.Tracing.Endpoint}}"
  # The share of new traces recorded (0 to 1); a call continuing a trace
  # follows its caller's decision.
  sampling_ratio = {{.C.Tracing.SamplingRatio}}
  service_name = "{{.C.Tracing.ServiceName}}"

# The node VM: a small Linux VM booted from a node image (make node-image)
# that runs the unmodified kubelet, which reaches this daemon's CRI and
# streaming server over the VM's private channel (never a network). This
# is how a Mac joins a cluster: kubelet cannot run on macOS. It is a VM
# like the pods' (it outlives the daemon and is restarted when it dies)
# but no CRI client sees it.
[node]
  enabled = {{.C.Node.Enabled}}
  image = "{{.C.Node.Image}}"
  # kubelet's flags; the daemon adds --container-runtime-endpoint and
  # --image-service-endpoint. Every path they name must be under shares.
  kubelet_args = [{{range $i, $a := .C.Node.KubeletArgs}}{{if $i}}, {{end}}"{{$a}}"{{end}}]
  # Host directories mounted in the node VM at the same path, so every
  # path a CRI request names is the same file on both sides. kubelet's
  # root dir itself stays in the VM (a tmpfs: cAdvisor knows no 9p or
  # virtiofs); its pods/ directory, where the volumes are, is shared.
  shares = [{{range $i, $a := .C.Node.Shares}}{{if $i}}, {{end}}"{{$a}}"{{end}}]
  # 0 = the host's: the node reports the host's capacity.
  cpus = {{.C.Node.CPUs}}
  memory_bytes = {{.C.Node.MemoryBytes}}
  # kubelet's log; "" = <state>/node.
  log_dir = "{{.C.Node.LogDir}}"
  # The node VM's network: "host" (the hypervisor's NAT; kubelet's
  # connections come from the host) or "pod" (the pod network through the
  # CNI plugin, like a pod: kubelet reaches pod IPs itself, and ports
  # become the node VM's hostPorts). A Mac's default is "pod", which needs
  # macvz-net's "socket" mode (socket_vmnet) so that VMs reach each other.
  network = "{{.C.Node.Network}}"
  # The node's address, which kubelet reports (the daemon passes it as
  # --node-ip): the host's own. The node VM gets it on its loopback with
  # its local route removed, so kubelet accepts it while traffic to the
  # host's address still leaves the VM. "" = kubelet_args' --node-ip,
  # else the host's address on its default route.
  node_ip = "{{.C.Node.NodeIP}}"
  # kubelet's ports forwarded from node_ip on the host into the node VM
  # (the API server's exec, logs and port-forward reach kubelet so), when
  # kubelet_args has a --kubeconfig: a standalone kubelet needs none.
  ports = [{{range $i, $p := .C.Node.Ports}}{{if $i}}, {{end}}{{$p}}{{end}}]

# Runtime handlers (the handler of a RuntimeClass) besides the default
# ("macvz" or empty). vm_image boots every sandbox of the handler from that
# image at RunPodSandbox, before any container exists.
#
# allow_vm_image_annotation lets a pod of the handler pick the image it
# boots at RunPodSandbox with the annotation macvz.io/vm-image. That image
# is used as present on the node, past the kubelet's image admission
# (AlwaysPullImages, image pull secrets): any pod author could boot any
# image another pod pulled. Off unless set; a pod with the annotation then
# fails with FailedPrecondition. The default handler's section is
# [runtime_handlers.macvz] and takes every key but vm_image.
#
# agent = "none" is for images without the macvz guest agent (a stock Tart
# image): the VM is ready as soon as it runs and only the VM itself
# container works; exec, attach, port-forward, exec probes and containers
# with a command answer FailedPrecondition. A pod asks for the same with
# the annotation macvz.io/agent: none. "required" (the default) waits
# vm.boot_timeout for the agent.
#
# [runtime_handlers.macos-15]
#   vm_image = "ghcr.io/cirruslabs/macos-sequoia-base:latest"
#   allow_vm_image_annotation = false
#   agent = "none"
#
# [runtime_handlers.macvz]
#   allow_vm_image_annotation = false
[runtime_handlers]

# Per-registry settings, keyed by the host as written in image references.
# Mirrors are tried in order before the host itself; credentials given to
# PullImage are sent only to the host they were given for. Plain HTTP is
# used only for a host (or mirror) whose own entry says insecure = true.
#
# [registry.hosts."registry.k8s.io"]
#   mirrors = ["mirror.example.com:5000"]
#
# [registry.hosts."mirror.example.com:5000"]
#   insecure = true      # plain HTTP
#   skip_verify = false  # HTTPS without certificate verification
[registry]
  [registry.hosts]
`))

// DefaultTOML is the default configuration as commented TOML.
func DefaultTOML() []byte {
	var buf bytes.Buffer
	err := defaultTemplate.Execute(&buf, struct {
		Path string
		C    *Config
	}{DefaultPath, Default()})
	if err != nil {
		panic(err) // the template is fixed; a failure is a programming error
	}
	return buf.Bytes()
}

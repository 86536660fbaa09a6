// Package vm is the one small interface every hypervisor backend
// implements (lima's pkg/driver is the model): a neutral description of a
// VM (Spec), a Driver that validates and creates machines from it, and the
// Machine it hands back. The per-VM shim is the only user: it owns the
// Machine for the VM's whole life, so the daemon can restart freely.
//
// Backends live in their own packages: runtime/qemu (Linux guests under
// qemu-system-x86_64 or qemu-system-aarch64) and runtime/vz (macOS guests, darwin only).
package vm

import (
	"context"
	"net"
	"time"
)

// BootKind says how the VM starts.
type BootKind string

const (
	// BootLinux boots a kernel (and initrd) directly, without firmware.
	BootLinux BootKind = "linux"
	// BootMacOS boots a macOS guest with Apple's boot loader.
	BootMacOS BootKind = "macos"
)

// Spec is everything a backend needs to run one VM. It is written by the
// daemon as JSON into the sandbox's state directory and read by the shim.
type Spec struct {
	// ID is the sandbox ID the VM belongs to (names, logs).
	ID string `json:"id"`
	// Dir is the sandbox's state directory: the backend keeps its sockets,
	// pid files and saved state there, nothing elsewhere.
	Dir string `json:"dir"`

	CPUs        int   `json:"cpus"`
	MemoryBytes int64 `json:"memoryBytes"`
	// Arch is the guest's CPU architecture as GOARCH names it ("amd64",
	// "arm64"), from the image; empty means the backend's usual guest
	// (amd64 for qemu, arm64 for vz).
	Arch string `json:"arch,omitempty"`

	Boot   Boot    `json:"boot"`
	Disks  []Disk  `json:"disks,omitempty"`
	Shares []Share `json:"shares,omitempty"`
	NICs   []NIC   `json:"nics,omitempty"`

	// ConsoleLog receives the guest's serial console (kernel messages,
	// the agent's log). Appended to, rotated to ConsoleLog.1 at
	// ConsoleLogMax bytes (0: the driver's default).
	ConsoleLog    string `json:"consoleLog"`
	ConsoleLogMax int64  `json:"consoleLogMax,omitempty"`

	// RestoreFrom, when set, is a state file written by Machine.Save of a
	// VM with the same Spec (but for ID, Dir, disks' paths, NICs, and the
	// entries of a share of several directories): the VM resumes from it
	// instead of booting.
	RestoreFrom string `json:"restoreFrom,omitempty"`
	// RestoreRAM, with RestoreFrom, is the guest RAM file a
	// RAMFileSaver wrote beside that state (RestoreFrom + RAMFileSuffix):
	// the VM maps it copy-on-write instead of reading its RAM from the
	// stream. Only the daemon's own warm states set it, never a file
	// from outside (a checkpoint directory).
	RestoreRAM string `json:"restoreRAM,omitempty"`
	// Savable: the VM's state is to be saved (warm start), or was: the
	// backend builds it from devices it can save and restore, leaving out
	// what it cannot (vz: a macOS guest's entropy device and console).
	// Every VM of a warm-start key has it, so a restore finds the devices
	// the state was saved with.
	Savable bool `json:"savable,omitempty"`

	// QEMU are the qemu backend's settings from the daemon config; other
	// backends ignore them.
	QEMU QEMUOptions `json:"qemu,omitzero"`
}

// QEMUOptions override the qemu driver's defaults; "" keeps a default.
type QEMUOptions struct {
	// Binary is the QEMU executable for amd64 guests, a path or a name
	// looked up in PATH.
	Binary string `json:"binary,omitempty"`
	// ARM64Binary is the QEMU executable for arm64 guests.
	ARM64Binary string `json:"arm64Binary,omitempty"`
	// Accel is "auto", "kvm" or "tcg".
	Accel string `json:"accel,omitempty"`
	// Machine is the QEMU machine type: "q35" or "pc" for amd64 guests,
	// "virt" (the only one, and the default) for arm64 guests.
	Machine string `json:"machine,omitempty"`
}

// Boot is how the guest starts.
type Boot struct {
	Kind BootKind `json:"kind"`
	// BootLinux: an uncompressed kernel (PVH ELF vmlinux for qemu, an
	// arm64 Image for vz), optional initrd and the command line.
	Kernel  string `json:"kernel,omitempty"`
	Initrd  string `json:"initrd,omitempty"`
	Cmdline string `json:"cmdline,omitempty"`
	// BootMacOS: the platform identity, and the auxiliary storage (NVRAM)
	// file, which must be this VM's own copy.
	HardwareModel []byte `json:"hardwareModel,omitempty"`
	MachineID     []byte `json:"machineId,omitempty"`
	AuxStorage    string `json:"auxStorage,omitempty"`
	// MachineIDFile: when MachineID is empty, the fresh identifier the
	// backend makes is written here (its data representation), so that a
	// state saved from this VM can be restored with the same identity.
	MachineIDFile string `json:"machineIdFile,omitempty"`
}

// Disk is a raw disk image file attached as a virtio block device, in
// order (the first is the boot disk where that matters).
type Disk struct {
	Path     string `json:"path"`
	ReadOnly bool   `json:"readOnly,omitempty"`
}

// Share is a host directory shared into the guest under Tag (virtio-9p
// on qemu, virtiofs on vz); the guest agent mounts it.
type Share struct {
	Tag      string `json:"tag"`
	HostPath string `json:"hostPath"`
	ReadOnly bool   `json:"readOnly,omitempty"`
	// Passthrough makes what the guest writes real on the host: its
	// owners, modes and symlinks. Only for a guest the host trusts with
	// that (the node VM, whose kubelet writes the volumes and logs pods
	// read); a pod's guest gets mapped files that mean nothing there.
	Passthrough bool `json:"passthrough,omitempty"`
	// Dirs, when set, make the share a set of host directories instead
	// of HostPath: the guest sees each at the share's top level under
	// its Name, read-only or not on its own (vz's
	// VZMultipleDirectoryShare). HostPath and ReadOnly are then unset.
	// The qemu backend refuses such a share.
	Dirs []ShareDir `json:"dirs,omitempty"`
}

// ShareDir is one host directory of a multi-directory share.
type ShareDir struct {
	// Name is its entry at the share's top level: generated, never
	// taken from a path.
	Name     string `json:"name"`
	HostPath string `json:"hostPath"`
	ReadOnly bool   `json:"readOnly,omitempty"`
}

// NICKind is how a NIC reaches the host network, as the net plugin's
// result says.
type NICKind string

const (
	NICTap          NICKind = "tap"           // Linux: an existing tap device, Device names it
	NICUser         NICKind = "user"          // qemu user-mode networking (no host setup)
	NICVmnetNAT     NICKind = "vmnet-nat"     // vz NAT attachment
	NICVmnetBridged NICKind = "vmnet-bridged" // vz bridged to host interface Device
	NICSocket       NICKind = "socket"        // vz file-handle attachment relayed to socket_vmnet's unix stream socket at Device
)

// NIC is one virtio network interface.
type NIC struct {
	Kind   NICKind `json:"kind"`
	Device string  `json:"device,omitempty"`
	MAC    string  `json:"mac"`
	// Forwards are host ports the hypervisor's own NAT forwards to the
	// guest (a host-network pod's ports; NICUser only).
	Forwards []Forward `json:"forwards,omitempty"`
}

// Forward is one host port forwarded to a guest port.
type Forward struct {
	Protocol  string `json:"protocol"`         // "tcp" or "udp"
	HostIP    string `json:"hostIP,omitempty"` // "" = every address
	HostPort  int    `json:"hostPort"`
	GuestPort int    `json:"guestPort"`
}

// State is a machine's lifecycle state.
type State string

const (
	StateCreated State = "created"
	StateRunning State = "running"
	StateStopped State = "stopped"
)

// Exit describes how a machine stopped.
type Exit struct {
	At time.Time `json:"at"`
	// Reason is human-readable: "guest powered off", "killed", "qemu
	// exited with status 1: <last stderr line>".
	Reason string `json:"reason"`
	// Clean is true when the guest shut itself down or was stopped by
	// Stop within its grace period.
	Clean bool `json:"clean"`
}

// Stats is the host's view of a machine's resource use.
type Stats struct {
	CPUNanos    uint64 `json:"cpuNanos"`    // CPU time used by the VM process(es)
	MemoryBytes uint64 `json:"memoryBytes"` // resident memory of the VM
}

// Driver creates machines. Implementations are safe for concurrent use.
type Driver interface {
	// Name is the backend's name in the config ("qemu", "vz").
	Name() string
	// Validate reports, before anything is created, why a spec cannot run
	// on this backend (errdefs.ErrInvalidArgument or
	// ErrFailedPrecondition, with a message naming the field).
	Validate(spec *Spec) error
	// Create prepares a machine without starting it.
	Create(ctx context.Context, spec *Spec) (Machine, error)
	// Restorable reports why a VM of spec could not later be restored
	// from a state Machine.Save writes (nil: it can). It looks at the
	// spec's shape (boot kind, guest architecture) and the host, not at
	// its files, so the daemon asks it before a boot to decide whether
	// the VM's state is worth saving at all.
	Restorable(spec *Spec) error
}

// Machine is one VM. Methods are safe for concurrent use.
type Machine interface {
	// Start boots (or restores) the VM and returns once it is running;
	// it does not wait for the guest agent.
	Start(ctx context.Context) error
	// Stop asks the guest to power off (ACPI power button; the shim asks
	// the agent first, which is gentler) and waits up to grace, then
	// stops the VM hard. Stopping a stopped machine is not an error.
	Stop(ctx context.Context, grace time.Duration) error
	// Done is closed when the VM has stopped, for any reason.
	Done() <-chan struct{}
	// Exit is how it stopped; valid once Done is closed.
	Exit() Exit
	State() State
	Stats(ctx context.Context) (Stats, error)
	// DialAgent opens a byte stream to the guest agent's channel
	// (virtio-serial on qemu: one stream at a time; vsock on vz). The
	// caller owns the connection.
	DialAgent(ctx context.Context) (net.Conn, error)
	// Save pauses the VM and writes its device and memory state to path,
	// for a later Spec.RestoreFrom. The VM stays paused: the caller
	// resumes or stops it.
	Save(ctx context.Context, path string) error
	// Resume continues a VM paused by Save.
	Resume(ctx context.Context) error
}

// RAMFileSuffix names the RAM file a RAMFileSaver writes beside its
// state file.
const RAMFileSuffix = ".ram"

// RAMFileSaver is a Machine that can save its guest RAM to a file of its
// own (path + RAMFileSuffix) and only the device state to path. A
// restore then maps the RAM file copy-on-write (Spec.RestoreRAM): it
// allocates and copies nothing up front, and VMs restored from one state
// share its unchanged pages in the page cache. A machine that cannot
// (QEMU: one not booted with its RAM in a memfd) saves as Save does.
type RAMFileSaver interface {
	SaveRAMFile(ctx context.Context, path string) error
}

// AgentConsoleMark is in every line the macvz agent logs (its logger's
// attribute c=macvz-agent, cmd/macvz-agent), on the guest's console too.
// Its first line there is where a bare boot of the same guest is timed
// to (BenchmarkPodStart's baseline).
const AgentConsoleMark = "c=macvz-agent"

// ConsoleMarker is a Machine that notes, on the host's clock, when the
// guest's console first carried AgentConsoleMark: the boot as far as a
// bare boot of the guest goes, which tells apart what the guest's own
// boot took and what came after (the agent's first answer). The guest
// writes its console, so the time is for the boot's phases only, never
// for a decision.
type ConsoleMarker interface {
	// AgentLineAt is when the mark was first seen; zero until then.
	AgentLineAt() time.Time
}

// Balloon is a Machine whose guest memory can be taken back and returned
// while it runs, through a virtio memory balloon. A VM cannot grow past
// the memory it booted with, so this is how a running pod's memory
// shrinks and grows again (in-place resize).
type Balloon interface {
	// SetMemoryTarget asks the guest to make do with bytes of its boot
	// memory (Spec.MemoryBytes at most). It returns once the hypervisor
	// has the target; the guest's driver moves to it at its own pace.
	SetMemoryTarget(ctx context.Context, bytes int64) error
}

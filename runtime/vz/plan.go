// Package vz is the macOS backend: macOS guests, and arm64 Linux guests
// booted from a kernel and initrd (linuxplan.go), under Apple's
// Virtualization.framework, through github.com/Code-Hex/vz/v3. The
// framework exists only on darwin; this file is the platform-neutral half
// (what a vm.Spec asks of the framework, validated), tested on Linux, and
// *_darwin.go turns a plan into framework objects.
package vz

import (
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/containerd/errdefs"

	"github.com/macvz/macvz/runtime/vm"
)

// AgentPort is the vsock port the guest agent listens on (the agent's
// default on macOS, and its launchd job's).
const AgentPort = 1024

// Limits are the framework's bounds for a VM's size, read at runtime on
// darwin (VZVirtualMachineConfiguration's minimum/maximum allowed CPU
// count and memory size).
type Limits struct {
	MinCPUs, MaxCPUs     int
	MinMemory, MaxMemory uint64
}

// NICPlan is one virtio NIC and how it reaches the network.
type NICPlan struct {
	Kind vm.NICKind
	// Interface is the host interface to bridge to (vmnet-bridged), or
	// the path of socket_vmnet's unix stream socket (socket: the VM gets
	// a datagram socketpair relayed to it, package socketvmnet).
	Interface string
	MAC       net.HardwareAddr
}

// SharePlan is one virtiofs device exporting one host directory, or,
// when Dirs is set, several under their names (a
// VZMultipleDirectoryShare; HostPath is then empty).
type SharePlan struct {
	Tag, HostPath string
	ReadOnly      bool
	Dirs          []vm.ShareDir
}

// Plan is the VM the darwin code builds.
type Plan struct {
	// Boot is the guest's kind: vm.BootMacOS (Apple's boot loader, the
	// Mac platform fields below) or vm.BootLinux (Linux, which has no
	// platform identity or auxiliary storage).
	Boot vm.BootKind
	// Linux is a Linux guest's boot loader (Boot is vm.BootLinux).
	Linux *LinuxBoot

	CPUs   int
	Memory uint64
	// BootMacOS only: HardwareModel is
	// VZMacHardwareModel.dataRepresentation; MachineID is
	// VZMacMachineIdentifier.dataRepresentation, nil = make a fresh one.
	HardwareModel, MachineID []byte
	AuxStorage               string
	// MachineIDFile receives a fresh identifier's data representation.
	MachineIDFile string
	// Disks are virtio-blk devices, in order. Every disk uses caching
	// mode Cached and synchronisation mode Fsync: lima documents disk
	// corruption on Apple silicon with the automatic caching mode.
	Disks  []vm.Disk
	Shares []SharePlan
	NICs   []NICPlan
	// ConsoleLog receives the virtio console (appended; rotated at
	// ConsoleLogMax bytes, 0 = the default).
	ConsoleLog    string
	ConsoleLogMax int64
	// RestoreFrom is a saved state to restore instead of booting (macOS
	// guests only: see Restorable).
	RestoreFrom string
	// Entropy adds a virtio entropy device. A savable macOS guest has
	// none, nor a console (ConsoleLog is empty): the framework has refused
	// to save VMs with either (macOS 14), and a macOS guest needs neither
	// (it seeds its own generator and logs to its unified log).
	Entropy bool
	// The devices every macOS VM gets, whatever the spec: a Mac graphics
	// device (even headless: VMs without one have shown vsock connection
	// resets), keyboard and trackpad, an entropy device, a memory
	// balloon, one virtio-socket device for the agent. A Linux guest
	// gets the entropy device, the balloon and the socket device, no
	// display and no input devices.
}

// NewPlan validates spec against the framework's limits and describes
// the VM to build. Errors wrap errdefs.ErrInvalidArgument (a field the
// spec got wrong), ErrFailedPrecondition (a Linux guest's kernel or
// initrd is not there; a Linux guest cannot be restored) or
// ErrNotImplemented (what this backend cannot run).
func NewPlan(spec *vm.Spec, lim Limits) (*Plan, error) {
	p := &Plan{
		Boot: spec.Boot.Kind,
		CPUs: spec.CPUs, Memory: uint64(max(spec.MemoryBytes, 0)),
		ConsoleLog: spec.ConsoleLog, ConsoleLogMax: spec.ConsoleLogMax, RestoreFrom: spec.RestoreFrom,
		Entropy: true,
	}
	if spec.Savable && spec.Boot.Kind == vm.BootMacOS {
		p.Entropy, p.ConsoleLog = false, ""
	}
	switch spec.Boot.Kind {
	case vm.BootMacOS:
		if err := p.macOSBoot(spec); err != nil {
			return nil, err
		}
	case vm.BootLinux:
		lb, err := linuxBoot(spec)
		if err != nil {
			return nil, err
		}
		p.Linux = lb
	default:
		return nil, fmt.Errorf("vz: boot kind %q: this backend runs macOS and Linux guests: %w", spec.Boot.Kind, errdefs.ErrNotImplemented)
	}
	if p.CPUs < lim.MinCPUs || (lim.MaxCPUs > 0 && p.CPUs > lim.MaxCPUs) || p.CPUs < 1 {
		return nil, bad("%d CPUs: the framework allows %d to %d", p.CPUs, lim.MinCPUs, lim.MaxCPUs)
	}
	if p.Memory < lim.MinMemory || (lim.MaxMemory > 0 && p.Memory > lim.MaxMemory) || p.Memory == 0 {
		return nil, bad("%d bytes of memory: the framework allows %d to %d", p.Memory, lim.MinMemory, lim.MaxMemory)
	}
	if p.Memory%(1<<20) != 0 {
		// The framework wants a multiple of 1 MiB.
		return nil, bad("memory %d bytes is not a whole number of MiB", p.Memory)
	}
	if len(spec.Disks) == 0 && p.Boot == vm.BootMacOS {
		// A Linux guest may live in its initrd alone.
		return nil, bad("a macOS guest needs a boot disk")
	}
	for _, d := range spec.Disks {
		if !filepath.IsAbs(d.Path) {
			return nil, bad("disk %q must be an absolute path", d.Path)
		}
	}
	p.Disks = spec.Disks
	tags := map[string]bool{}
	for _, s := range spec.Shares {
		if s.Tag == "" || tags[s.Tag] {
			return nil, bad("share tag %q is empty or repeated", s.Tag)
		}
		tags[s.Tag] = true
		if p.Boot == vm.BootLinux && len(s.Tag) > maxLinuxTag {
			return nil, bad("share tag %q: a Linux guest's virtiofs tag has at most %d bytes", s.Tag, maxLinuxTag)
		}
		if len(s.Dirs) > 0 {
			dirs, err := planShareDirs(s)
			if err != nil {
				return nil, err
			}
			p.Shares = append(p.Shares, SharePlan{Tag: s.Tag, Dirs: dirs})
			continue
		}
		if !filepath.IsAbs(s.HostPath) {
			return nil, bad("share %s: host path %q must be absolute", s.Tag, s.HostPath)
		}
		p.Shares = append(p.Shares, SharePlan{Tag: s.Tag, HostPath: s.HostPath, ReadOnly: s.ReadOnly})
	}
	for i, n := range spec.NICs {
		mac, err := net.ParseMAC(n.MAC)
		if err != nil || len(mac) != 6 {
			return nil, bad("nic %d: MAC %q is not an Ethernet address", i, n.MAC)
		}
		np := NICPlan{Kind: n.Kind, MAC: mac}
		switch n.Kind {
		case vm.NICVmnetNAT:
		case vm.NICVmnetBridged:
			if n.Device == "" {
				return nil, bad("nic %d: vmnet-bridged needs the host interface to bridge to", i)
			}
			np.Interface = n.Device
		case vm.NICSocket:
			if !filepath.IsAbs(n.Device) {
				return nil, bad("nic %d: socket attachment needs the absolute path of socket_vmnet's socket, got %q", i, n.Device)
			}
			np.Interface = n.Device
		default:
			return nil, bad("nic %d: kind %q is not available on vz (vmnet-nat, vmnet-bridged or socket)", i, n.Kind)
		}
		if len(n.Forwards) > 0 {
			return nil, bad("nic %d: port forwards of the hypervisor's NAT are a QEMU feature; macvz proxies hostPorts itself on macOS", i)
		}
		p.NICs = append(p.NICs, np)
	}
	return p, nil
}

// planShareDirs checks the entries of a multi-directory share: each
// has a name that is one plain file name (the guest sees it as a
// directory at the share's top level), used once, and an absolute,
// clean host path. The share has no host path or read-only flag of its
// own: each entry has its own.
func planShareDirs(s vm.Share) ([]vm.ShareDir, error) {
	if s.HostPath != "" || s.ReadOnly || s.Passthrough {
		return nil, bad("share %s: a share of several directories has no host path, read-only flag or passthrough of its own (each entry has its own)", s.Tag)
	}
	names := map[string]bool{}
	out := make([]vm.ShareDir, 0, len(s.Dirs))
	for _, d := range s.Dirs {
		if !shareDirName(d.Name) || names[d.Name] {
			return nil, bad("share %s: entry name %q is empty, repeated or not a plain name (letters, digits, '.', '_', '-'; not . or ..)", s.Tag, d.Name)
		}
		names[d.Name] = true
		if !filepath.IsAbs(d.HostPath) || filepath.Clean(d.HostPath) != d.HostPath {
			return nil, bad("share %s: entry %s: host path %q must be absolute and clean", s.Tag, d.Name, d.HostPath)
		}
		out = append(out, d)
	}
	return out, nil
}

// shareDirName says whether n can name an entry of a multi-directory
// share: a short plain name, never a path or a dot entry.
func shareDirName(n string) bool {
	if n == "" || n == "." || n == ".." || len(n) > 64 {
		return false
	}
	for _, r := range n {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9', r == '.', r == '_', r == '-':
		default:
			return false
		}
	}
	return true
}

// macOSBoot checks and takes a macOS guest's platform fields.
func (p *Plan) macOSBoot(spec *vm.Spec) error {
	if len(spec.Boot.HardwareModel) == 0 {
		return bad("boot.hardwareModel is empty (the image's VZMacHardwareModel)")
	}
	if spec.Boot.AuxStorage == "" || !filepath.IsAbs(spec.Boot.AuxStorage) {
		return bad("boot.auxStorage %q must be an absolute path (the sandbox's own copy)", spec.Boot.AuxStorage)
	}
	if f := spec.Boot.MachineIDFile; f != "" && !filepath.IsAbs(f) {
		return bad("boot.machineIdFile %q must be an absolute path", f)
	}
	p.HardwareModel, p.MachineID, p.AuxStorage = spec.Boot.HardwareModel, spec.Boot.MachineID, spec.Boot.AuxStorage
	p.MachineIDFile = spec.Boot.MachineIDFile
	return nil
}

// bad is a spec's mistake.
func bad(format string, a ...any) error {
	return fmt.Errorf("vz: "+format+": %w", append(a, errdefs.ErrInvalidArgument)...)
}

// precondition is what the host lacks for a spec that is itself right.
func precondition(format string, a ...any) error {
	return fmt.Errorf("vz: "+format+": %w", append(a, errdefs.ErrFailedPrecondition)...)
}

// MinRestoreMacOS is the first macOS release whose framework saves and
// restores a VM's state (VZVirtualMachine saveMachineStateTo and
// restoreMachineStateFrom).
const MinRestoreMacOS = 14

// Restorable says why a VM of spec could not be restored from a saved
// state on a host running macOS release hostMajor (0: not known, which
// is never trusted: see CanSave); nil when it can. The
// framework may still refuse a configuration (Save validates it). Linux
// guests are never restored (errLinuxRestore).
func Restorable(spec *vm.Spec, hostMajor int) error {
	switch spec.Boot.Kind {
	case vm.BootMacOS:
	case vm.BootLinux:
		return errLinuxRestore
	default:
		return fmt.Errorf("vz: boot kind %q: this backend runs macOS and Linux guests: %w", spec.Boot.Kind, errdefs.ErrNotImplemented)
	}
	if hostMajor < MinRestoreMacOS {
		return fmt.Errorf("vz: this host runs %s; saving and restoring a VM's state needs macOS %d or later, so warm start is off: %w",
			hostRelease(hostMajor), MinRestoreMacOS, errdefs.ErrFailedPrecondition)
	}
	return nil
}

// CanSave says why a host running macOS release hostMajor cannot save a
// VM's state: before macOS 14, and when the release is not known (0),
// the framework has no save (and Code-Hex/vz's validation of one raises
// an uncaught exception there). It wraps errdefs.ErrNotImplemented: the
// daemon stops trying for that VM.
func CanSave(hostMajor int) error {
	if hostMajor >= MinRestoreMacOS {
		return nil
	}
	return fmt.Errorf("vz: this host runs %s; saving a VM's state needs macOS %d or later: %w", hostRelease(hostMajor), MinRestoreMacOS, errdefs.ErrNotImplemented)
}

// hostRelease names a macOS major release for a message.
func hostRelease(major int) string {
	if major <= 0 {
		return "an unknown macOS release"
	}
	return "macOS " + strconv.Itoa(major)
}

// unsavable is the framework's refusal to save a VM of this
// configuration (VZVirtualMachineConfiguration
// validateSaveRestoreSupport), as errdefs.ErrNotImplemented: the daemon
// keeps the reason and boots that VM's later sandboxes cold.
func unsavable(why error) error {
	if why == nil {
		why = errors.New("no reason given")
	}
	return fmt.Errorf("vz: Virtualization.framework cannot save a VM configured like this one: %v: %w", why, errdefs.ErrNotImplemented)
}

// MacOSMajor is the major release of a macOS product version
// ("14.2.1" is 14; sysctl kern.osproductversion); 0 when v is not one.
func MacOSMajor(v string) int {
	major, _, _ := strings.Cut(strings.TrimSpace(v), ".")
	n, err := strconv.Atoi(major)
	if err != nil || n < 0 {
		return 0
	}
	return n
}

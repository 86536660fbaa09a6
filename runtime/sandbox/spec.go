package sandbox

import (
	"fmt"
	"path/filepath"
	"runtime"
	"strconv"

	"github.com/containerd/errdefs"

	"github.com/macvz/macvz/runtime/store"
	"github.com/macvz/macvz/runtime/vm"
	"github.com/macvz/macvz/vmimage"
)

// sharedTag is the one host directory share every VM gets: the sandbox's
// shared/ directory, under which each container's volumes are bind-mounted
// on the host at StartContainer. One share set at boot serves volumes of
// containers created later, which a hypervisor could not add to a running
// VM.
const sharedTag = "macvz-shared"

// sharedROTag is the read-only share (the sandbox's shared-ro/): the
// read-only volumes are bound under it. The guest can write nothing
// there, so it is exported with its host symlinks as symlinks, which
// kubelet's ConfigMap, Secret, projected and downward API volumes are
// made of (key → ..data/key); the writable share keeps a guest's
// symlinks plain files on the host, and a host symlink unreadable.
const sharedROTag = "macvz-shared-ro"

// guestSharedDirFor is where the agent mounts that share in a guest of
// the OS (macOS has no /run; /var/run is /private/var/run there).
func guestSharedDirFor(guestOS string) string {
	if guestOS == "darwin" {
		return "/var/run/macvz/shared"
	}
	return "/run/macvz/shared"
}

// shareMount is a share the guest gets at boot (mountShares: lazily, so
// mounted when a container first binds a path of it).
type shareMount struct {
	tag, target string
	ro          bool
}

// nodeShareTag is the tag of the node VM's i-th own share (short enough
// for 9p's 31 bytes and virtiofs's 36).
func nodeShareTag(i int) string { return "macvz-node" + strconv.Itoa(i) }

// nodeShareMounts are the node VM's own shares, given at boot for its
// kubelet container's mounts to bind from.
func nodeShareMounts(spec store.SandboxSpec, guestOS string) []shareMount {
	var out []shareMount
	for i := range spec.NodeShares {
		out = append(out, shareMount{nodeShareTag(i), guestSharedDirFor(guestOS) + "-node/" + strconv.Itoa(i), false})
	}
	return out
}

// nodeShareOf finds the node VM's share that holds hostPath: its tag and
// hostPath's path in it ("." for the share itself).
func nodeShareOf(spec store.SandboxSpec, hostPath string) (tag, sub string, ok bool) {
	for i, p := range spec.NodeShares {
		if rel, err := filepath.Rel(p, hostPath); err == nil && filepath.IsLocal(rel) {
			return nodeShareTag(i), rel, true
		}
	}
	return "", "", false
}

// shareFstype is how the backend exports host directories: virtiofs on
// vz (macOS guests have no 9p), 9p on QEMU.
func shareFstype(backend string) string {
	if backend == "vz" {
		return "virtiofs"
	}
	return "9p"
}

// vmSize is the VM's CPU count and memory: the sandbox's resources
// (kubelet sends the sum of its containers' limits, requests where no
// limit is set), else the containers known so far, else the configured
// default; never below the image's minimums, never above the host.
func (s *Controller) vmSize(pod store.Resources, ctrs []store.Resources, desc *vmimage.Descriptor) (cpus int, mem int64) {
	milli, mem := pod.MilliCPU, pod.MemoryBytes
	if milli == 0 && mem == 0 {
		for _, c := range ctrs {
			milli += c.MilliCPU
			mem += c.MemoryBytes
		}
	}
	cpus = wholeCPUs(milli)
	if cpus == 0 {
		cpus = s.cfg.DefaultCPUs
	}
	if mem == 0 {
		mem = s.cfg.DefaultMemoryBytes
	}
	cpus = max(cpus, desc.MinCPUs, 1)
	mem = max(mem, desc.MinMemoryBytes, 64<<20)
	cpus = min(cpus, runtime.NumCPU())
	return cpus, wholeMiB(mem)
}

// wholeCPUs is millicores rounded up to vCPUs.
func wholeCPUs(milli int64) int { return int((milli + 999) / 1000) }

// wholeMiB rounds memory up to whole MiB: hypervisors size guests in MiB.
func wholeMiB(bytes int64) int64 { return (bytes + 1<<20 - 1) &^ (1<<20 - 1) }

// ConsoleLogFile is the VM's console log in the sandbox's directory
// (rotated to ConsoleLogFile+".1" at vm.console_log_max_bytes).
const ConsoleLogFile = "console.log"

// vmSpec describes a sandbox's VM booting from base (the directory of
// the sandbox's writable clone of the image's base).
func (s *Controller) vmSpec(sbID, sbDir, base string, desc *vmimage.Descriptor, cpus int, mem int64) (*vm.Spec, error) {
	spec := &vm.Spec{
		ID:            sbID,
		Dir:           sbDir,
		CPUs:          cpus,
		MemoryBytes:   mem,
		ConsoleLog:    filepath.Join(sbDir, ConsoleLogFile),
		ConsoleLogMax: s.cfg.ConsoleLogMax,
		Shares: []vm.Share{
			{Tag: sharedTag, HostPath: filepath.Join(sbDir, sharedDir)},
			{Tag: sharedROTag, HostPath: filepath.Join(sbDir, sharedRODir), ReadOnly: true},
		},
		QEMU: s.cfg.QEMU,
	}
	in := func(name string) string {
		if name == "" {
			return ""
		}
		return filepath.Join(base, name)
	}
	switch desc.OS {
	case "linux":
		if desc.Kernel == "" {
			return nil, fmt.Errorf("VM image has no kernel; EFI-booted Linux images are not supported yet: %w", errdefs.ErrNotImplemented)
		}
		spec.Boot = vm.Boot{Kind: vm.BootLinux, Kernel: in(desc.Kernel), Initrd: in(desc.Initrd), Cmdline: desc.KernelCmdline}
		// The image's architecture picks the backend's emulator (qemu:
		// qemu-system-aarch64 for arm64 guests).
		spec.Arch = desc.Arch
	case "darwin":
		if len(desc.HardwareModel) == 0 || desc.NVRAM == "" {
			return nil, fmt.Errorf("macOS VM image without a hardware model or auxiliary storage (NVRAM): %w", errdefs.ErrFailedPrecondition)
		}
		// base is the sandbox's own clone: the aux storage in it is this
		// VM's copy (two VMs sharing one fail to lock it).
		spec.Boot = vm.Boot{Kind: vm.BootMacOS, HardwareModel: desc.HardwareModel, AuxStorage: in(desc.NVRAM)}
		if s.cfg.ImageMachineID {
			// Empty: the backend makes a fresh one.
			spec.Boot.MachineID = desc.MachineID
		}
	default:
		return nil, fmt.Errorf("VM image for OS %q: %w", desc.OS, errdefs.ErrNotImplemented)
	}
	if desc.Disk != "" {
		spec.Disks = []vm.Disk{{Path: in(desc.Disk)}}
	}
	return spec, nil
}

// sharedDir and sharedRODir are the sandbox directories the VM's shares
// export.
const (
	sharedDir   = "shared"
	sharedRODir = "shared-ro"
)

// shareDir is the share a volume is bound under.
func shareDir(readOnly bool) string {
	if readOnly {
		return sharedRODir
	}
	return sharedDir
}

// unmountShared removes the volume binds of a sandbox, and its shares.
func unmountShared(sbDir string) error {
	if err := unmountUnder(sbDir, sharedDir); err != nil {
		return err
	}
	return unmountUnder(sbDir, sharedRODir)
}

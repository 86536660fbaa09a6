package cri

import (
	"context"
	"fmt"
	"path/filepath"
	"runtime"

	"github.com/containerd/errdefs"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/macvz/macvz/cri/config"
	"github.com/macvz/macvz/runtime/vm"
	"github.com/macvz/macvz/vmimage"
	"github.com/macvz/macvz/vmimage/imagestore"
)

// sharedTag is the one host directory share every VM gets: the sandbox's
// shared/ directory, under which each container's volumes are bind-mounted
// on the host at StartContainer. One share set at boot serves volumes of
// containers created later, which a hypervisor could not add to a running
// VM.
const sharedTag = "macvz-shared"

// guestSharedDirFor is where the agent mounts that share in a guest of
// the OS (macOS has no /run; /var/run is /private/var/run there).
func guestSharedDirFor(guestOS string) string {
	if guestOS == "darwin" {
		return "/var/run/macvz/shared"
	}
	return "/run/macvz/shared"
}

// shareFstype is how the backend exports host directories: virtiofs on
// vz (macOS guests have no 9p), 9p on QEMU.
func shareFstype(backend string) string {
	if backend == "vz" {
		return "virtiofs"
	}
	return "9p"
}

// imageRef is a VM image resolved for booting.
type imageRef struct {
	rec  imagestore.Image
	desc *vmimage.Descriptor
	// content is the digest of its layer list: the VM it boots.
	content string
	// base is the snapshot name of its committed base, baseDir that
	// base's directory.
	base, baseDir string
}

// vmImage resolves a reference to a pulled, bootable VM image.
func (s *Service) vmImage(ctx context.Context, ref string) (*imageRef, error) {
	vi, err := s.images.VMImage(ctx, ref)
	if err != nil {
		return nil, err
	}
	return &imageRef{rec: vi.Image, desc: vi.Descriptor, content: vi.Content, base: vi.Base, baseDir: vi.BaseDir}, nil
}

// vmSize is the VM's CPU count and memory: the pod's resources (kubelet
// sends the sum of its containers' limits, requests where no limit is
// set), else the containers known so far, else the configured default;
// never below the image's minimums, never above the host.
func vmSize(cfg config.VM, pod *runtimeapi.PodSandboxConfig, ctrs []*runtimeapi.ContainerConfig, desc *vmimage.Descriptor) (cpus int, mem int64) {
	milli, mem := resourcesOf(pod.GetLinux().GetResources())
	if milli == 0 && mem == 0 {
		for _, c := range ctrs {
			m, b := resourcesOf(c.GetLinux().GetResources())
			milli += m
			mem += b
		}
	}
	cpus = int((milli + 999) / 1000)
	if cpus == 0 {
		cpus = cfg.DefaultCPUs
	}
	if mem == 0 {
		mem = cfg.DefaultMemoryBytes
	}
	cpus = max(cpus, desc.MinCPUs, 1)
	mem = max(mem, desc.MinMemoryBytes, 64<<20)
	cpus = min(cpus, runtime.NumCPU())
	// Round memory up to whole MiB: hypervisors size guests in MiB.
	mem = (mem + 1<<20 - 1) &^ (1<<20 - 1)
	return cpus, mem
}

// resourcesOf is (CPU in millicores, memory in bytes) from CRI Linux
// resources: the CFS quota when set (a limit), else the shares (a request).
func resourcesOf(r *runtimeapi.LinuxContainerResources) (milli, mem int64) {
	if r == nil {
		return 0, 0
	}
	switch {
	case r.GetCpuQuota() > 0 && r.GetCpuPeriod() > 0:
		milli = r.GetCpuQuota() * 1000 / r.GetCpuPeriod()
	case r.GetCpuShares() > 2: // 2 is kubelet's "no request" minimum
		milli = r.GetCpuShares() * 1000 / 1024
	}
	return milli, r.GetMemoryLimitInBytes()
}

// vmSpec describes a sandbox's VM booting from base (the directory of
// the sandbox's writable clone of the image's base).
func (s *Service) vmSpec(sbID, sbDir, base string, desc *vmimage.Descriptor, cpus int, mem int64) (*vm.Spec, error) {
	spec := &vm.Spec{
		ID:            sbID,
		Dir:           sbDir,
		CPUs:          cpus,
		MemoryBytes:   mem,
		ConsoleLog:    filepath.Join(sbDir, "console.log"),
		ConsoleLogMax: s.cfg.VM.ConsoleLogMaxBytes,
		Shares:        []vm.Share{{Tag: sharedTag, HostPath: filepath.Join(sbDir, sharedDir)}},
		Options:       map[string]string{"accel": s.cfg.QEMU.Accel, "binary": s.cfg.QEMU.Binary},
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
	case "darwin":
		if len(desc.HardwareModel) == 0 || desc.NVRAM == "" {
			return nil, fmt.Errorf("macOS VM image without a hardware model or auxiliary storage (NVRAM): %w", errdefs.ErrFailedPrecondition)
		}
		// base is the sandbox's own clone: the aux storage in it is this
		// VM's copy (two VMs sharing one fail to lock it).
		spec.Boot = vm.Boot{Kind: vm.BootMacOS, HardwareModel: desc.HardwareModel, AuxStorage: in(desc.NVRAM)}
		if s.cfg.VZ.MachineIdentifier == "image" {
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

// sharedDir is the sandbox directory the VM's share exports.
const sharedDir = "shared"

// unmountShared removes the volume binds of a sandbox.
func unmountShared(sbDir string) error {
	return unmountUnder(sbDir, sharedDir)
}

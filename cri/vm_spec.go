package cri

import (
	"context"
	"encoding/json"
	"fmt"
	"path/filepath"
	"runtime"
	"strings"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
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
}

// vmImage resolves a reference to a pulled, bootable VM image.
func (s *Service) vmImage(ctx context.Context, ref string) (*imageRef, error) {
	recs, err := s.images.Resolve(ctx, ref)
	if errdefs.IsNotFound(err) {
		return nil, fmt.Errorf("image %q is not present; pull it first: %w", ref, errdefs.ErrNotFound)
	}
	if err != nil {
		return nil, err
	}
	rec := recs[0]
	if rec.Kind == vmimage.KindNone {
		return nil, fmt.Errorf("image %q is an ordinary container image; macvz sandboxes boot VM images (Tart, macOS-vz-kubelet, macvz Linux guest): %w", ref, errdefs.ErrFailedPrecondition)
	}
	// A manifest digest names immutable content: its descriptor and
	// layer identity are read once, not on every exec (probes).
	if v, ok := s.vmImages.Load(rec.Manifest.Digest); ok {
		c := v.(*imageRef)
		return &imageRef{rec: rec, desc: c.desc, content: c.content}, nil
	}
	desc, err := s.baseDescriptor(ctx, rec)
	if err != nil {
		return nil, err
	}
	content, err := s.vmContent(ctx, rec)
	if err != nil {
		return nil, err
	}
	ir := &imageRef{rec: rec, desc: desc, content: content}
	s.vmImages.Store(rec.Manifest.Digest, ir)
	return ir, nil
}

// vmContent is the digest of a VM image's layer digests, in order.
func (s *Service) vmContent(ctx context.Context, rec imagestore.Image) (string, error) {
	b, err := content.ReadBlob(ctx, s.images.Content(), rec.Manifest)
	if err != nil {
		return "", fmt.Errorf("image %s: reading its manifest: %w", rec.Name, err)
	}
	var m ocispec.Manifest
	if err := json.Unmarshal(b, &m); err != nil {
		return "", fmt.Errorf("image %s: manifest: %w", rec.Name, err)
	}
	var list strings.Builder
	for _, l := range m.Layers {
		list.WriteString(l.Digest.String())
		list.WriteByte('\n')
	}
	return digest.FromString(list.String()).String(), nil
}

// baseDescriptor reads vm.json from an image's committed base (read in
// place: nothing writes it).
func (s *Service) baseDescriptor(ctx context.Context, rec imagestore.Image) (*vmimage.Descriptor, error) {
	if !s.images.HasBase(ctx, rec) {
		return nil, fmt.Errorf("image %s has no unpacked VM base; remove and pull it again: %w", rec.Name, errdefs.ErrFailedPrecondition)
	}
	dir, err := s.sn.CommittedDir(ctx, imagestore.BaseName(rec.Manifest.Digest))
	if err != nil {
		return nil, err
	}
	return vmimage.ReadDescriptor(dir)
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

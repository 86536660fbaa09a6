package cri

import (
	"bytes"
	"path/filepath"
	"testing"

	"github.com/containerd/errdefs"

	"github.com/macvz/macvz/cri/config"
	"github.com/macvz/macvz/runtime/vm"
	"github.com/macvz/macvz/vmimage"
)

// The neutral half of the macOS backend: an unpacked Tart or agoda image
// (their descriptors as vmimage writes them) becomes a vm.Spec that the
// vz driver only has to turn into framework objects.
func TestVMSpecMacOS(t *testing.T) {
	hw, id := []byte("hardware model plist"), []byte("machine id plist")
	tart := &vmimage.Descriptor{Kind: vmimage.KindTart, OS: "darwin", Arch: "arm64", Disk: vmimage.DiskFile, NVRAM: vmimage.NVRAMFile,
		HardwareModel: hw, MachineID: id, MinCPUs: 4, MinMemoryBytes: 8 << 30}
	agoda := &vmimage.Descriptor{Kind: vmimage.KindAgoda, OS: "darwin", Arch: "arm64", Disk: vmimage.DiskFile, NVRAM: vmimage.AuxFile,
		HardwareModel: hw, MachineID: id}
	for _, tc := range []struct {
		name     string
		desc     *vmimage.Descriptor
		machine  string
		wantAux  string
		wantID   []byte
		wantCPUs int
	}{
		{"tart, fresh identifier", tart, "fresh", vmimage.NVRAMFile, nil, 4},
		{"tart, the image's identifier", tart, "image", vmimage.NVRAMFile, id, 4},
		{"agoda", agoda, "fresh", vmimage.AuxFile, nil, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := config.Default()
			cfg.VZ.MachineIdentifier = tc.machine
			s := &Service{cfg: cfg}
			clone := "/var/lib/macvz/snapshots/snapshots/7"
			cpus, mem := vmSize(cfg.VM, nil, nil, tc.desc)
			spec, err := s.vmSpec("sb1", "/run/macvz/sandboxes/sb1", clone, tc.desc, cpus, mem)
			if err != nil {
				t.Fatal(err)
			}
			if spec.Boot.Kind != vm.BootMacOS || !bytes.Equal(spec.Boot.HardwareModel, hw) || !bytes.Equal(spec.Boot.MachineID, tc.wantID) {
				t.Errorf("boot: %+v", spec.Boot)
			}
			// The aux storage and the disk are the sandbox's clone's.
			if spec.Boot.AuxStorage != filepath.Join(clone, tc.wantAux) {
				t.Errorf("aux storage %s", spec.Boot.AuxStorage)
			}
			if len(spec.Disks) != 1 || spec.Disks[0].Path != filepath.Join(clone, vmimage.DiskFile) || spec.Disks[0].ReadOnly {
				t.Errorf("disks %+v", spec.Disks)
			}
			if spec.CPUs != min(tc.wantCPUs, cpus) || spec.MemoryBytes < tc.desc.MinMemoryBytes {
				t.Errorf("size: %d CPUs, %d bytes", spec.CPUs, spec.MemoryBytes)
			}
			if len(spec.Shares) != 1 || spec.Shares[0].Tag != sharedTag {
				t.Errorf("shares %+v", spec.Shares)
			}
		})
	}
	s := &Service{cfg: config.Default()}
	bad := *tart
	bad.HardwareModel = nil
	if _, err := s.vmSpec("sb1", "/d", "/c", &bad, 4, 8<<30); !errdefs.IsFailedPrecondition(err) {
		t.Errorf("no hardware model: %v", err)
	}
}

package vmimage

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
)

// DescriptorFile is the name of the file, inside an unpacked VM base, that
// tells the runtime how to boot it. File names in it are relative to the
// base directory.
const DescriptorFile = "vm.json"

// Descriptor is what the runtime needs to boot an unpacked VM image,
// whatever format it came from.
type Descriptor struct {
	Kind Kind   `json:"kind"`
	OS   string `json:"os"`   // "darwin" or "linux"
	Arch string `json:"arch"` // "arm64", "amd64"

	// Disk is the raw disk image; empty for a Linux guest without a disk.
	Disk string `json:"disk,omitempty"`
	// NVRAM (Tart) or auxiliary storage (agoda) for macOS guests.
	NVRAM string `json:"nvram,omitempty"`
	// HardwareModel and MachineID are the raw (decoded) bytes of
	// VZMacHardwareModel.dataRepresentation and VZMacMachineIdentifier.
	HardwareModel []byte `json:"hardwareModel,omitempty"`
	MachineID     []byte `json:"machineId,omitempty"`

	// Linux direct boot.
	Kernel        string `json:"kernel,omitempty"`
	Initrd        string `json:"initrd,omitempty"`
	KernelCmdline string `json:"kernelCmdline,omitempty"`

	// Minimums the VM must get, whatever the pod asks for.
	MinCPUs        int   `json:"minCpus,omitempty"`
	MinMemoryBytes int64 `json:"minMemoryBytes,omitempty"`

	// Display and MAC as recorded by Tart; informative.
	Display    string `json:"display,omitempty"`
	MACAddress string `json:"macAddress,omitempty"`

	// Process is the default process of the guest (macvz Linux format);
	// nil when the image has none.
	Process *Process `json:"process,omitempty"`
}

// Process is a VM image's default process, the VM-image analogue of an OCI
// image config's Entrypoint/Cmd/Env/WorkingDir/User.
type Process struct {
	Entrypoint []string `json:"entrypoint,omitempty"`
	Cmd        []string `json:"cmd,omitempty"`
	Env        []string `json:"env,omitempty"`
	WorkingDir string   `json:"workingDir,omitempty"`
	User       string   `json:"user,omitempty"`
}

// WriteDescriptor writes d into dir atomically.
func WriteDescriptor(dir string, d *Descriptor) error {
	b, err := json.MarshalIndent(d, "", "  ")
	if err != nil {
		return err
	}
	tmp := filepath.Join(dir, "."+DescriptorFile+".tmp")
	if err := os.WriteFile(tmp, b, 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, filepath.Join(dir, DescriptorFile))
}

// ReadDescriptor reads the descriptor of an unpacked base or clone.
func ReadDescriptor(dir string) (*Descriptor, error) {
	b, err := os.ReadFile(filepath.Join(dir, DescriptorFile))
	if err != nil {
		return nil, err
	}
	var d Descriptor
	if err := json.Unmarshal(b, &d); err != nil {
		return nil, fmt.Errorf("%s: %w", DescriptorFile, err)
	}
	return &d, nil
}

//go:build darwin

package vz

import (
	"fmt"

	"github.com/Code-Hex/vz/v3"
)

// linuxBootLoader is VZLinuxBootLoader for a Linux guest's plan: the
// kernel (an uncompressed arm64 Image, checked by NewPlan), its initrd
// and the command line LinuxCmdline made. Every other device a Linux
// guest has is built as for a macOS guest (buildConfig).
func linuxBootLoader(lb *LinuxBoot) (vz.BootLoader, error) {
	if lb == nil {
		return nil, fmt.Errorf("vz: a Linux guest's plan has no boot loader")
	}
	opts := []vz.LinuxBootLoaderOption{vz.WithCommandLine(lb.CmdLine)}
	if lb.Initrd != "" {
		opts = append(opts, vz.WithInitrd(lb.Initrd))
	}
	boot, err := vz.NewLinuxBootLoader(lb.Kernel, opts...)
	if err != nil {
		return nil, fmt.Errorf("vz: the Linux boot loader (kernel %s): %w", lb.Kernel, err)
	}
	return boot, nil
}

package cri

import (
	"context"
	"os"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// RuntimeConfig tells kubelet which cgroup driver to use. kubelet v1.37.2
// still falls back to its own cgroupDriver setting when a runtime answers
// this call Unimplemented, and marks that fallback for removal in 1.38.
func (s *Service) RuntimeConfig(context.Context, *runtimeapi.RuntimeConfigRequest) (*runtimeapi.RuntimeConfigResponse, error) {
	return &runtimeapi.RuntimeConfigResponse{Linux: &runtimeapi.LinuxRuntimeConfiguration{
		CgroupDriver: cgroupDriver(s.cfg.CgroupDriver, systemdBooted),
	}}, nil
}

// cgroupDriver resolves the cgroup_driver setting; booted reports
// whether the host runs systemd.
func cgroupDriver(setting string, booted func() bool) runtimeapi.CgroupDriver {
	switch {
	case setting == "systemd", setting == "auto" && booted():
		return runtimeapi.CgroupDriver_SYSTEMD
	default:
		return runtimeapi.CgroupDriver_CGROUPFS
	}
}

// systemdBooted is sd_booted(3)'s test: systemd creates
// /run/systemd/system early at boot.
func systemdBooted() bool {
	fi, err := os.Lstat("/run/systemd/system")
	return err == nil && fi.IsDir()
}

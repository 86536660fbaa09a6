package agent

import (
	"fmt"
	"os/exec"
)

type forkSpec struct {
	newPidNS  bool
	cgroup    string
	joinPidNS int
}

var errNoMemoryCgroup = fmt.Errorf("macOS has no memory cgroups")

var errNoCgroups = fmt.Errorf("macOS has no cgroups: a macOS pod's limits are its VM's size")

type cgroupLimits struct{ memory, cpuQuota, cpuPeriod int64 }

func containerCgroup(container string, limits cgroupLimits) (string, error) {
	return "", fmt.Errorf("a container memory limit or CPU quota needs Linux cgroups, which macOS does not have: a macOS pod's size is its VM's")
}

func podCgroup(needCPU bool) (string, error) { return "", errNoCgroups }

func setCgroupLimits(dir string, lim cgroupLimits) error { return errNoCgroups }

func removeCgroup(dir string) error { return nil }

func oomKills(dir string) uint64 { return 0 }

func startIsolated(cmd *exec.Cmd, spec forkSpec, start func() error) error {
	if spec.newPidNS || spec.cgroup != "" || spec.joinPidNS > 0 {
		return fmt.Errorf("PID namespaces and cgroups are Linux-only: macOS cannot give a container its own")
	}
	return start()
}

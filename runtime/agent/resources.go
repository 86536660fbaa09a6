package agent

import (
	"context"
	"errors"

	"google.golang.org/grpc/codes"

	api "github.com/macvz/macvz/runtime/agentapi"
)

// UpdateResources changes a running container's cgroup limits, or the
// pod's (see the proto). The host holds the sandbox's lock, so a
// container does not start or stop under it.
func (a *agent) UpdateResources(ctx context.Context, req *api.UpdateResourcesRequest) (*api.UpdateResourcesResponse, error) {
	switch {
	case req.MemoryLimitBytes < 0 || req.CpuQuotaUs < 0 || req.CpuPeriodUs < 0:
		return nil, errf(codes.InvalidArgument, "UpdateResources: negative limits (memory %d, CPU quota %d, period %d)", req.MemoryLimitBytes, req.CpuQuotaUs, req.CpuPeriodUs)
	case req.CpuQuotaUs > 0 && req.CpuQuotaUs < 1000:
		return nil, errf(codes.InvalidArgument, "UpdateResources: CPU quota %d µs is below the kernel's 1000", req.CpuQuotaUs)
	case req.CpuPeriodUs != 0 && (req.CpuPeriodUs < 1000 || req.CpuPeriodUs > 1_000_000):
		return nil, errf(codes.InvalidArgument, "UpdateResources: CPU period %d µs is outside 1000..1000000", req.CpuPeriodUs)
	}
	lim := cgroupLimits{memory: req.MemoryLimitBytes, cpuQuota: req.CpuQuotaUs, cpuPeriod: req.CpuPeriodUs}
	var dir string
	if req.ContainerId == "" {
		d, err := podCgroup(lim.cpuQuota > 0)
		if err != nil {
			return nil, cgroupErr(err)
		}
		dir = d
	} else {
		m := a.mainOf(req.ContainerId)
		switch {
		case m.pid == 0:
			return nil, errf(codes.FailedPrecondition, "container %s has no running main process", req.ContainerId)
		case m.cgroup == "":
			return nil, errf(codes.FailedPrecondition, "container %s started without a memory limit or CPU quota, so it has no cgroup in the guest to change: new limits apply when it starts again", req.ContainerId)
		}
		dir = m.cgroup
	}
	if err := setCgroupLimits(dir, lim); err != nil {
		return nil, cgroupErr(err)
	}
	a.cfg.log.Info("limits updated", "container", req.ContainerId, "memory", lim.memory, "cpuQuota", lim.cpuQuota, "cpuPeriod", lim.cpuPeriod)
	return &api.UpdateResourcesResponse{}, nil
}

// cgroupErr classifies a cgroup failure: a guest without the
// controllers cannot do it (FailedPrecondition; macOS: Unimplemented).
func cgroupErr(err error) error {
	switch {
	case errors.Is(err, errNoCgroups):
		return errf(codes.Unimplemented, "%v", err)
	case errors.Is(err, errNoMemoryCgroup):
		return errf(codes.FailedPrecondition, "%v", err)
	}
	return errf(codes.Internal, "%v", err)
}

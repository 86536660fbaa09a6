package cri

import (
	"context"
	"fmt"

	"github.com/containerd/errdefs"
	"google.golang.org/protobuf/proto"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/macvz/macvz/runtime/agentapi"
	"github.com/macvz/macvz/runtime/shimapi"
	"github.com/macvz/macvz/runtime/store"
)

// UpdateContainerResources changes a container's limits. A running
// container of a Linux guest gets them at once, in its cgroup in the
// guest (memory.max, cpu.max), as runc changes a container's on a node;
// they are recorded only once applied, so ContainerStatus reports what
// the container runs with and kubelet's resize status tells the truth.
// A container not started yet, and one of a macOS guest (no cgroups:
// its pod's VM is its bound, resized by UpdatePodSandboxResources),
// records them for its start.
func (s *Service) UpdateContainerResources(ctx context.Context, r *runtimeapi.UpdateContainerResourcesRequest) (*runtimeapi.UpdateContainerResourcesResponse, error) {
	res := r.GetLinux()
	if res == nil {
		return nil, fmt.Errorf("UpdateContainerResources needs linux resources: %w", errdefs.ErrInvalidArgument)
	}
	if err := validateResources(res); err != nil {
		return nil, err
	}
	c, err := s.container(ctx, r.GetContainerId())
	if err != nil {
		return nil, err
	}
	unlock := s.ctl.Lock(c.SandboxID)
	defer unlock()
	c = s.ctl.RefreshContainer(ctx, c)
	if c.State == store.ContainerExited {
		return nil, fmt.Errorf("container %s has exited: %w", c.ID, errdefs.ErrFailedPrecondition)
	}
	live := false
	if c.State == store.ContainerRunning && !c.IsVM {
		sb, err := s.sandbox(ctx, c.SandboxID)
		if err != nil {
			return nil, err
		}
		if live = sb.VMOS != "darwin"; live {
			if err := s.applyContainerResources(ctx, sb, c, res); err != nil {
				return nil, err
			}
		}
	}
	_, err = s.st.UpdateContainer(c.ID, func(c *store.Container) error {
		cfg, err := ctrConfig(*c)
		if err != nil {
			return err
		}
		if cfg.Linux == nil {
			cfg.Linux = &runtimeapi.LinuxContainerConfig{}
		}
		cfg.Linux.Resources = res
		for k, v := range r.GetAnnotations() {
			if cfg.Annotations == nil {
				cfg.Annotations = map[string]string{}
			}
			cfg.Annotations[k] = v
		}
		c.Config, err = proto.Marshal(cfg)
		return err
	})
	if err != nil {
		return nil, err
	}
	msg := "container resources recorded for its start"
	if live {
		msg = "container resources applied in the guest"
	}
	ctrLog(c).Info(msg, "cpuQuota", res.GetCpuQuota(), "cpuPeriod", res.GetCpuPeriod(), "memoryLimit", res.GetMemoryLimitInBytes())
	return &runtimeapi.UpdateContainerResourcesResponse{}, nil
}

// applyContainerResources sets a running container's cgroup limits in
// its Linux guest. Limits it already has ask nothing of the guest; a
// container that started with none has no cgroup to change
// (FailedPrecondition from the agent).
func (s *Service) applyContainerResources(ctx context.Context, sb store.Sandbox, c store.Container, res *runtimeapi.LinuxContainerResources) error {
	want := &agentapi.CreateProcessRequest{}
	applyLimits(want, res)
	have := &agentapi.CreateProcessRequest{}
	if cfg, err := ctrConfig(c); err == nil {
		applyLimits(have, cfg.GetLinux().GetResources())
	}
	if want.MemoryLimitBytes == have.MemoryLimitBytes && want.CpuQuotaUs == have.CpuQuotaUs && want.CpuPeriodUs == have.CpuPeriodUs {
		return nil
	}
	sc, err := s.ctl.Shim(ctx, sb)
	if err != nil {
		return err
	}
	_, err = sc.Agent().UpdateResources(ctx, &agentapi.UpdateResourcesRequest{
		ContainerId: c.ID, MemoryLimitBytes: want.MemoryLimitBytes, CpuQuotaUs: want.CpuQuotaUs, CpuPeriodUs: want.CpuPeriodUs,
	})
	if err != nil {
		return fmt.Errorf("changing container %s's limits in the guest: %w", c.ID, err)
	}
	return nil
}

// minMemoryLimit is the smallest container memory limit (Docker's).
const minMemoryLimit = 6 << 20

// validateResources refuses resources no VM can have.
func validateResources(r *runtimeapi.LinuxContainerResources) error {
	switch {
	case r.GetCpuQuota() < -1 || r.GetCpuPeriod() < 0 || r.GetCpuShares() < 0:
		return fmt.Errorf("negative CPU resources (quota %d, period %d, shares %d): %w", r.GetCpuQuota(), r.GetCpuPeriod(), r.GetCpuShares(), errdefs.ErrInvalidArgument)
	case r.GetCpuPeriod() != 0 && (r.GetCpuPeriod() < 1000 || r.GetCpuPeriod() > 1_000_000):
		return fmt.Errorf("CPU period %d µs is outside what the kernel accepts (1000 to 1000000): %w", r.GetCpuPeriod(), errdefs.ErrInvalidArgument)
	case r.GetMemoryLimitInBytes() < 0:
		return fmt.Errorf("negative memory limit %d: %w", r.GetMemoryLimitInBytes(), errdefs.ErrInvalidArgument)
	case r.GetMemoryLimitInBytes() > 0 && r.GetMemoryLimitInBytes() < minMemoryLimit:
		// A Linux guest's container limit is a cgroup's memory.max (the
		// VM itself is never below 64 MiB); Docker's floor keeps a
		// typo from OOM-killing the container at once.
		return fmt.Errorf("memory limit %d bytes is below the 6 MiB a container needs: %w", r.GetMemoryLimitInBytes(), errdefs.ErrInvalidArgument)
	}
	return nil
}

// ReopenContainerLog makes the shim reopen a running container's log
// file (kubelet renames it to rotate it first).
func (s *Service) ReopenContainerLog(ctx context.Context, r *runtimeapi.ReopenContainerLogRequest) (*runtimeapi.ReopenContainerLogResponse, error) {
	c, err := s.container(ctx, r.GetContainerId())
	if err != nil {
		return nil, err
	}
	c = s.ctl.RefreshContainer(ctx, c)
	if c.State != store.ContainerRunning {
		return nil, fmt.Errorf("container %s is not running: %w", c.ID, errdefs.ErrFailedPrecondition)
	}
	if c.IsVM || c.LogPath == "" {
		return &runtimeapi.ReopenContainerLogResponse{}, nil
	}
	sb, err := s.sandbox(ctx, c.SandboxID)
	if err != nil {
		return nil, err
	}
	if err := checkLogPath(sb, c); err != nil {
		return nil, err
	}
	sc, err := s.ctl.Shim(ctx, sb)
	if err != nil {
		return nil, err
	}
	if _, err := sc.Shim().ReopenLog(ctx, &shimapi.ReopenLogRequest{ContainerId: c.ID}); err != nil {
		return nil, fmt.Errorf("reopening the log: %w", err)
	}
	return &runtimeapi.ReopenContainerLogResponse{}, nil
}

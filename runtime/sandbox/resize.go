package sandbox

import (
	"context"
	"fmt"
	"runtime"

	"github.com/containerd/errdefs"

	"github.com/macvz/macvz/runtime/agentapi"
	"github.com/macvz/macvz/runtime/shim"
	"github.com/macvz/macvz/runtime/shimapi"
	"github.com/macvz/macvz/runtime/store"
)

// Resize gives a sandbox new pod resources (in-place resize). A sandbox
// whose VM has not booted just records them: its boot sizes the VM from
// them. A running VM changes what it can. Its memory, through the
// balloon, down from and back up to what it booted with. Its CPU limit,
// below its vCPUs, as a CFS quota on the guest's pod cgroup (every
// container cgroup is under it), as kubelet limits a pod on a node; a
// macOS guest has no cgroups. It cannot grow past its boot memory nor
// add vCPUs: what is asked of it that it cannot do is
// FailedPrecondition, saying why, after the memory is applied, so
// kubelet's resize status carries the reason. The caller holds the
// sandbox lock.
func (s *Controller) Resize(ctx context.Context, id string, res store.Resources) error {
	sb, err := s.st.Sandbox(id)
	if err != nil {
		return err
	}
	if sb.State != store.SandboxReady {
		return fmt.Errorf("sandbox %s is not ready: %w", id, errdefs.ErrFailedPrecondition)
	}
	if !sb.VMStarted {
		_, err := s.st.UpdateSandbox(id, func(r *store.Sandbox) error {
			if r.Spec != nil {
				r.Spec.Resources = res
			}
			return nil
		})
		if err == nil {
			sbLog(id).Info("pod resources recorded for the VM's boot", "milliCPU", res.MilliCPU, "memory", res.MemoryBytes)
		}
		return err
	}
	if sb.VMCPUs == 0 || sb.VMMemoryBytes == 0 {
		return fmt.Errorf("sandbox %s's VM was booted by an older macvz, which did not record its size: it cannot be resized while it runs: %w", id, errdefs.ErrFailedPrecondition)
	}
	wantCPUs, target, err := resizePlan(sb, res)
	if err != nil {
		return err
	}
	current := sb.VMMemoryTarget
	if current == 0 {
		current = sb.VMMemoryBytes
	}
	var c shim.Conn
	conn := func() (shim.Conn, error) {
		var err error
		if c == nil {
			c, err = s.Shim(ctx, sb)
		}
		return c, err
	}
	if target != current {
		c, err := conn()
		if err != nil {
			return err
		}
		if linuxAgent(sb) {
			// A Linux guest loads its balloon driver only when asked
			// (the agent's late modules): the balloon answers once it is.
			waitGuestModules(ctx, sbLog(id), c.Agent(), "a memory resize")
		}
		if _, err := c.Shim().SetMemory(ctx, &shimapi.SetMemoryRequest{TargetBytes: target}); err != nil {
			return fmt.Errorf("setting sandbox %s's VM memory to %d MiB: %w", id, target>>20, err)
		}
		sbLog(id).Info("VM memory resized", "from", current, "to", target, "booted", sb.VMMemoryBytes)
	}
	quota := guestCPUQuota(res.MilliCPU, sb.VMCPUs)
	memNote := ""
	if target != current {
		memNote = " (its memory was resized)"
	}
	var cpuErr error
	switch {
	case wantCPUs > sb.VMCPUs:
		cpuErr = fmt.Errorf("sandbox %s's VM runs %d vCPUs and the new CPU limit needs %d: a running VM cannot add vCPUs%s; the larger CPU limit applies when the pod is recreated: %w",
			id, sb.VMCPUs, wantCPUs, memNote, errdefs.ErrFailedPrecondition)
	case quota == sb.GuestCPUQuota:
	case !linuxAgent(sb):
		cpuErr = fmt.Errorf("sandbox %s's VM runs %d vCPUs and the new CPU limit is %dm: only a Linux guest with the macvz agent can hold a pod below its vCPUs (a cgroup quota), and a running VM cannot remove vCPUs%s; the smaller CPU limit applies when the pod is recreated: %w",
			id, sb.VMCPUs, res.MilliCPU, memNote, errdefs.ErrFailedPrecondition)
	default:
		c, err := conn()
		if err != nil {
			return err
		}
		if _, err := c.Agent().UpdateResources(ctx, &agentapi.UpdateResourcesRequest{CpuQuotaUs: quota, CpuPeriodUs: cfsPeriod}); err != nil {
			cpuErr = fmt.Errorf("setting the CPU limit of sandbox %s's pod cgroup in the guest to %dm: %w", id, res.MilliCPU, err)
		} else {
			sbLog(id).Info("guest pod CPU quota set", "milliCPU", res.MilliCPU, "vCPUs", sb.VMCPUs, "quota", quota)
		}
	}
	if _, err := s.st.UpdateSandbox(id, func(r *store.Sandbox) error {
		r.VMMemoryTarget = target
		if target == r.VMMemoryBytes {
			r.VMMemoryTarget = 0
		}
		if r.Spec != nil {
			r.Spec.Resources.MemoryBytes = res.MemoryBytes
		}
		if cpuErr == nil {
			r.GuestCPUQuota = quota
			if r.Spec != nil {
				r.Spec.Resources = res
			}
		}
		return nil
	}); err != nil {
		return err
	}
	return cpuErr
}

// linuxAgent says whether sb's guest is Linux with the macvz agent (its
// kernel modules and its pod cgroup are the agent's).
func linuxAgent(sb store.Sandbox) bool {
	return sb.VMOS != "darwin" && !store.SpecOf(sb).NoAgent
}

// cfsPeriod is the CFS period of the guest pod cgroup's quota (the
// kernel's default, kubelet's).
const cfsPeriod = 100_000

// guestCPUQuota is the CFS quota (per cfsPeriod) that holds a pod to
// milliCPU in a VM of vcpus: none (0) when there is no limit or the
// vCPUs are no more than it.
func guestCPUQuota(milliCPU int64, vcpus int) int64 {
	if milliCPU <= 0 || milliCPU >= int64(vcpus)*1000 {
		return 0
	}
	return max(milliCPU*cfsPeriod/1000, 1000)
}

// resizePlan is the vCPUs and balloon target res asks of sb's running
// VM, sized as vmSize sizes a boot (whole vCPUs, whole MiB, not below
// the image's minimum memory); no CPU or
// memory in res keeps the VM's. Memory past what the VM booted with is
// FailedPrecondition: a balloon only gives back what it took.
func resizePlan(sb store.Sandbox, res store.Resources) (cpus int, target int64, err error) {
	if res.MilliCPU < 0 || res.MemoryBytes < 0 {
		return 0, 0, fmt.Errorf("negative resources (%d millicores, %d bytes): %w", res.MilliCPU, res.MemoryBytes, errdefs.ErrInvalidArgument)
	}
	cpus = sb.VMCPUs
	if res.MilliCPU > 0 {
		cpus = min(max(wholeCPUs(res.MilliCPU), 1), runtime.NumCPU())
	}
	target = sb.VMMemoryBytes
	if res.MemoryBytes > 0 {
		target = wholeMiB(res.MemoryBytes)
	}
	// Never below what the image needs, as at boot (the pod's limit is
	// then the containers' cgroups in the guest).
	target = max(target, sb.VMMinMemory)
	if target > sb.VMMemoryBytes {
		return 0, 0, fmt.Errorf("sandbox %s's VM booted with %d MiB and the new resources ask %d MiB: a running VM can give memory back and take it again, but not grow past its boot size; the larger size applies when the pod is recreated: %w",
			sb.ID, sb.VMMemoryBytes>>20, target>>20, errdefs.ErrFailedPrecondition)
	}
	return cpus, target, nil
}

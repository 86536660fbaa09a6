package cri

import (
	"context"
	"fmt"
	"time"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/macvz/macvz/runtime/agentapi"
	"github.com/macvz/macvz/runtime/shimapi"
	"github.com/macvz/macvz/runtime/store"
)

// Stats come from the guest agent: one Stats call per VM gives the VM's
// CPU, memory and root filesystem and each container's processes. A
// container is a process tree, so its CPU and RSS are its processes'; the
// VM container's are the whole VM's. Its "writable layer" is the guest's
// root filesystem, which all of the pod's containers share; it is stored
// in the VM's disk clone on the image filesystem, so its FsId is the
// image filesystem's (imageFsMountpoint): kubelet stats that mountpoint
// for the layer's capacity and free space, and fails the whole summary
// on a path its cAdvisor cannot place (the guest's "/" in the node VM is
// the node VM's initramfs). CPU rates (usageNanoCores) are derived here
// (stats_cpu.go); a pod's network is its NIC's host side (stats_network*).

func u64(v uint64) *runtimeapi.UInt64Value { return &runtimeapi.UInt64Value{Value: v} }

// maxStatsSkew is how far from the host's clock a guest's stats
// timestamp may be (the shim keeps the guest's clock within
// milliseconds of the host's).
const maxStatsSkew = time.Minute

// statsTime is the time of a guest's stats. The timestamp comes from the
// guest: the kubelet divides CPU time by the time between samples, so a
// missing, negative or far-off one is replaced by the host's now.
func statsTime(vm *agentapi.StatsResponse) int64 {
	now := time.Now()
	ts := vm.GetTimestampUnixNano()
	if ts <= 0 || ts < now.Add(-maxStatsSkew).UnixNano() || ts > now.Add(maxStatsSkew).UnixNano() {
		return now.UnixNano()
	}
	return ts
}

// vmStats asks a sandbox's agent for stats; nil when its VM is not
// running.
func (s *Service) vmStats(ctx context.Context, sb store.Sandbox) (*agentapi.StatsResponse, error) {
	sb = s.ctl.Refresh(ctx, sb)
	if sb.State != store.SandboxReady || !sb.VMStarted {
		return nil, nil
	}
	sc, err := s.ctl.Shim(ctx, sb)
	if err != nil {
		return nil, err
	}
	if store.SpecOf(sb).NoAgent {
		// No guest to ask: the host's view of the VM, its process's CPU
		// time and resident memory.
		r, err := sc.Shim().Stats(ctx, &shimapi.StatsRequest{})
		if err != nil {
			return nil, fmt.Errorf("sandbox %s: stats of the VM: %w", sb.ID, err)
		}
		return &agentapi.StatsResponse{
			TimestampUnixNano: r.GetTimestampUnixNano(),
			Cpu:               &agentapi.CPUStats{UsageCoreNanoseconds: r.GetCpuNanos()},
			Memory:            &agentapi.MemoryStats{UsageBytes: r.GetMemoryBytes(), WorkingSetBytes: r.GetMemoryBytes(), RssBytes: r.GetMemoryBytes()},
		}, nil
	}
	st, err := sc.Agent().Stats(ctx, &agentapi.StatsRequest{FilesystemPaths: []string{"/"}, PerContainer: true})
	if err != nil {
		return nil, fmt.Errorf("sandbox %s: stats from the guest: %w", sb.ID, err)
	}
	return st, nil
}

// cpuOf is a CPU sample of id, with its rate when one is known.
func cpuOf(id string, ts int64, usage uint64) *runtimeapi.CpuUsage {
	out := &runtimeapi.CpuUsage{Timestamp: ts, UsageCoreNanoSeconds: u64(usage)}
	if rate, ok := processCPURates.observe(id, ts, usage); ok {
		out.UsageNanoCores = u64(rate)
	}
	return out
}

func (s *Service) containerStatsOf(c store.Container, vm *agentapi.StatsResponse) (*runtimeapi.ContainerStats, error) {
	cfg, err := ctrConfig(c)
	if err != nil {
		return nil, err
	}
	out := &runtimeapi.ContainerStats{Attributes: &runtimeapi.ContainerAttributes{
		Id: c.ID, Metadata: cfg.GetMetadata(), Labels: cfg.GetLabels(), Annotations: cfg.GetAnnotations(),
	}}
	if vm == nil || c.State != store.ContainerRunning {
		return out, nil
	}
	ts := statsTime(vm)
	if c.IsVM {
		out.Cpu = cpuOf(c.ID, ts, vm.GetCpu().GetUsageCoreNanoseconds())
		out.Memory = memoryOf(ts, vm.GetMemory())
	} else {
		var cpu, rss uint64
		for _, cs := range vm.GetContainers() {
			if cs.GetContainerId() == c.ID {
				cpu, rss = cs.GetCpuUsageCoreNanoseconds(), cs.GetMemoryRssBytes()
			}
		}
		out.Cpu = cpuOf(c.ID, ts, cpu)
		out.Memory = &runtimeapi.MemoryUsage{Timestamp: ts, WorkingSetBytes: u64(rss), RssBytes: u64(rss), UsageBytes: u64(rss)}
	}
	for _, fs := range vm.GetFilesystems() {
		if fs.GetPath() == "/" && fs.GetError() == "" {
			out.WritableLayer = &runtimeapi.FilesystemUsage{
				Timestamp:  ts,
				FsId:       &runtimeapi.FilesystemIdentifier{Mountpoint: s.imageFsMountpoint()},
				UsedBytes:  u64(fs.GetUsedBytes()),
				InodesUsed: u64(fs.GetInodesUsed()),
			}
		}
	}
	return out, nil
}

func memoryOf(ts int64, m *agentapi.MemoryStats) *runtimeapi.MemoryUsage {
	return &runtimeapi.MemoryUsage{
		Timestamp:       ts,
		WorkingSetBytes: u64(m.GetWorkingSetBytes()),
		AvailableBytes:  u64(m.GetAvailableBytes()),
		UsageBytes:      u64(m.GetUsageBytes()),
		RssBytes:        u64(m.GetRssBytes()),
	}
}

// ContainerStats reports one container.
func (s *Service) ContainerStats(ctx context.Context, r *runtimeapi.ContainerStatsRequest) (*runtimeapi.ContainerStatsResponse, error) {
	c, err := s.container(ctx, r.GetContainerId())
	if err != nil {
		return nil, err
	}
	sb, err := s.sandbox(ctx, c.SandboxID)
	if err != nil {
		return nil, err
	}
	vm, err := s.vmStats(ctx, sb)
	if err != nil {
		return nil, err
	}
	c = s.ctl.RefreshContainer(ctx, c)
	st, err := s.containerStatsOf(c, vm)
	if err != nil {
		return nil, err
	}
	return &runtimeapi.ContainerStatsResponse{Stats: st}, nil
}

// ListContainerStats reports the containers matching the filter.
func (s *Service) ListContainerStats(ctx context.Context, r *runtimeapi.ListContainerStatsRequest) (*runtimeapi.ListContainerStatsResponse, error) {
	st, err := s.listContainerStats(ctx, r.GetFilter())
	if err != nil {
		return nil, err
	}
	return &runtimeapi.ListContainerStatsResponse{Stats: st}, nil
}

// StreamContainerStats is ListContainerStats in pages.
func (s *Service) StreamContainerStats(r *runtimeapi.StreamContainerStatsRequest, stream runtimeapi.RuntimeService_StreamContainerStatsServer) error {
	st, err := s.listContainerStats(stream.Context(), r.GetFilter())
	if err != nil {
		return err
	}
	return sendPages(st, func(p []*runtimeapi.ContainerStats) error {
		return stream.Send(&runtimeapi.StreamContainerStatsResponse{ContainerStats: p})
	})
}

func (s *Service) listContainerStats(ctx context.Context, f *runtimeapi.ContainerStatsFilter) ([]*runtimeapi.ContainerStats, error) {
	cs, err := s.st.Containers(visibleContainers(ctx, func(c *store.Container) bool {
		return hasPrefix(c.ID, f.GetId()) && hasPrefix(c.SandboxID, f.GetPodSandboxId())
	}))
	if err != nil {
		return nil, err
	}
	vms := map[string]*agentapi.StatsResponse{}
	var out []*runtimeapi.ContainerStats
	for _, c := range cs {
		c = s.ctl.RefreshContainer(ctx, c)
		cfg, err := ctrConfig(c)
		if err != nil {
			return nil, err
		}
		// Like containerd, only running containers have stats to list.
		if c.State != store.ContainerRunning || !labelsMatch(cfg.GetLabels(), f.GetLabelSelector()) {
			continue
		}
		vm, ok := vms[c.SandboxID]
		if !ok {
			if sb, err := s.sandbox(ctx, c.SandboxID); err == nil {
				if vm, err = s.vmStats(ctx, sb); err != nil {
					sbLog(sb.ID).Warn("stats", "err", err)
				}
			}
			vms[c.SandboxID] = vm
		}
		st, err := s.containerStatsOf(c, vm)
		if err != nil {
			return nil, err
		}
		out = append(out, st)
	}
	return out, nil
}

// PodSandboxStats reports one sandbox: its VM and its containers.
func (s *Service) PodSandboxStats(ctx context.Context, r *runtimeapi.PodSandboxStatsRequest) (*runtimeapi.PodSandboxStatsResponse, error) {
	sb, err := s.sandbox(ctx, r.GetPodSandboxId())
	if err != nil {
		return nil, err
	}
	st, err := s.sandboxStats(ctx, sb)
	if err != nil {
		return nil, err
	}
	return &runtimeapi.PodSandboxStatsResponse{Stats: st}, nil
}

// ListPodSandboxStats reports the ready sandboxes matching the filter.
func (s *Service) ListPodSandboxStats(ctx context.Context, r *runtimeapi.ListPodSandboxStatsRequest) (*runtimeapi.ListPodSandboxStatsResponse, error) {
	st, err := s.listSandboxStats(ctx, r.GetFilter())
	if err != nil {
		return nil, err
	}
	return &runtimeapi.ListPodSandboxStatsResponse{Stats: st}, nil
}

// StreamPodSandboxStats is ListPodSandboxStats in pages.
func (s *Service) StreamPodSandboxStats(r *runtimeapi.StreamPodSandboxStatsRequest, stream runtimeapi.RuntimeService_StreamPodSandboxStatsServer) error {
	st, err := s.listSandboxStats(stream.Context(), r.GetFilter())
	if err != nil {
		return err
	}
	return sendPages(st, func(p []*runtimeapi.PodSandboxStats) error {
		return stream.Send(&runtimeapi.StreamPodSandboxStatsResponse{PodSandboxStats: p})
	})
}

func (s *Service) listSandboxStats(ctx context.Context, f *runtimeapi.PodSandboxStatsFilter) ([]*runtimeapi.PodSandboxStats, error) {
	sbs, err := s.st.Sandboxes(visibleSandboxes(ctx, func(sb *store.Sandbox) bool { return hasPrefix(sb.ID, f.GetId()) }))
	if err != nil {
		return nil, err
	}
	var out []*runtimeapi.PodSandboxStats
	for _, sb := range sbs {
		sb = s.ctl.Refresh(ctx, sb)
		cfg, err := podConfig(sb)
		if err != nil {
			return nil, err
		}
		if sb.State != store.SandboxReady || !labelsMatch(cfg.GetLabels(), f.GetLabelSelector()) {
			continue
		}
		st, err := s.sandboxStats(ctx, sb)
		if err != nil {
			sbLog(sb.ID).Warn("stats", "err", err)
			continue
		}
		out = append(out, st)
	}
	return out, nil
}

func (s *Service) sandboxStats(ctx context.Context, sb store.Sandbox) (*runtimeapi.PodSandboxStats, error) {
	cfg, err := podConfig(sb)
	if err != nil {
		return nil, err
	}
	vm, err := s.vmStats(ctx, sb)
	if err != nil {
		return nil, err
	}
	return s.sandboxStatsOf(sb, cfg, vm)
}

// sandboxStatsOf is a sandbox's stats from its agent's answer (nil: its
// VM is not running): the VM's, and its running containers'.
func (s *Service) sandboxStatsOf(sb store.Sandbox, cfg *runtimeapi.PodSandboxConfig, vm *agentapi.StatsResponse) (*runtimeapi.PodSandboxStats, error) {
	out := &runtimeapi.PodSandboxStats{
		Attributes: &runtimeapi.PodSandboxAttributes{Id: sb.ID, Metadata: cfg.GetMetadata(), Labels: cfg.GetLabels(), Annotations: cfg.GetAnnotations()},
		Linux:      &runtimeapi.LinuxPodSandboxStats{},
	}
	if vm == nil {
		return out, nil
	}
	ts := statsTime(vm)
	out.Linux.Cpu = cpuOf(sb.ID, ts, vm.GetCpu().GetUsageCoreNanoseconds())
	out.Linux.Memory = memoryOf(ts, vm.GetMemory())
	if sb.Network != nil {
		out.Linux.Network = nicUsage(sb.Network, time.Now().UnixNano())
	}
	var procs uint64
	for _, c := range vm.GetContainers() {
		procs += uint64(c.GetProcesses())
	}
	out.Linux.Process = &runtimeapi.ProcessUsage{Timestamp: ts, ProcessCount: u64(procs)}
	cs, err := s.st.Containers(func(c *store.Container) bool { return c.SandboxID == sb.ID && c.State == store.ContainerRunning })
	if err != nil {
		return nil, err
	}
	for _, c := range cs {
		st, err := s.containerStatsOf(c, vm)
		if err != nil {
			return nil, err
		}
		out.Linux.Containers = append(out.Linux.Containers, st)
	}
	return out, nil
}

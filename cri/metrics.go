package cri

import (
	"context"
	"strconv"
	"time"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/macvz/macvz/runtime/agentapi"
	"github.com/macvz/macvz/runtime/store"
)

// Metrics are what kubelet serves as /metrics/cadvisor when its feature
// gate PodAndContainerStatsFromCRI is on (cAdvisor sees no pod of ours:
// they are VMs). Its collector (pkg/kubelet/metrics/collectors) asks
// ListMetricDescriptors once, when kubelet starts, and drops any metric
// whose name was not described then, so the descriptors are fixed; it
// asks ListPodSandboxMetrics at every scrape and turns each Metric into a
// Prometheus sample as it is: the names, label keys and units are
// cAdvisor's, so dashboards and recording rules written for cAdvisor
// read these too.
//
// Every value comes from the agent's one Stats answer per VM: CPU and
// memory through the CRI stats stats.go makes of it (sandboxStatsOf,
// containerStatsOf), so these agree with ContainerStats and
// PodSandboxStats, and so with kubelet's /stats/summary and
// /metrics/resource. The pod is its VM as the guest sees itself
// (/proc/stat, meminfo, vmstat, net/dev, diskstats: its NICs and disks);
// a container is its processes (CPU split, threads, open files and
// sockets), and, when it has a cgroup of its own in the guest (a memory
// limit or a CPU quota), that cgroup's counters (page cache, peak usage,
// limit hits, OOM kills, CFS throttling). The spec_* metrics are the
// container's configured resources. What no VM measures is not
// described: see metricDefs.
//
// The labels are those kubelet gives cAdvisor's containers: container,
// id, image, name, namespace, pod. A container's are its name, its ID,
// its image reference, its ID again (cAdvisor's name under containerd is
// the container's ID), its pod's namespace and name. The pod itself (its
// VM: cAdvisor's pod cgroup) has container="", image="" and name="", and
// the sandbox's ID as id; recording rules tell the two apart by
// container!="" or image!="".

// Label keys: the base ones sorted, then a metric's own (cpu, device,
// interface, ...); a Metric's label values come in the same order.
var (
	baseLabelKeys      = []string{"container", "id", "image", "name", "namespace", "pod"}
	cpuLabelKeys       = withKeys("cpu")
	deviceLabelKeys    = withKeys("device")
	interfaceLabelKeys = withKeys("interface")
	failureLabelKeys   = withKeys("failure_type", "scope")
	blkioLabelKeys     = withKeys("device", "major", "minor", "operation")
)

func withKeys(k ...string) []string { return append(append([]string(nil), baseLabelKeys...), k...) }

// The metrics' names: cAdvisor's.
const (
	mCPUUsage         = "container_cpu_usage_seconds_total"
	mCPUUser          = "container_cpu_user_seconds_total"
	mCPUSystem        = "container_cpu_system_seconds_total"
	mCFSPeriods       = "container_cpu_cfs_periods_total"
	mCFSThrottled     = "container_cpu_cfs_throttled_periods_total"
	mCFSThrottledSecs = "container_cpu_cfs_throttled_seconds_total"
	mMemWorkingSet    = "container_memory_working_set_bytes"
	mMemUsage         = "container_memory_usage_bytes"
	mMemRSS           = "container_memory_rss"
	mMemCache         = "container_memory_cache"
	mMemMapped        = "container_memory_mapped_file"
	mMemKernel        = "container_memory_kernel_usage"
	mMemSwap          = "container_memory_swap"
	mMemMaxUsage      = "container_memory_max_usage_bytes"
	mMemFailcnt       = "container_memory_failcnt"
	mMemFailures      = "container_memory_failures_total"
	mOOMEvents        = "container_oom_events_total"
	mProcesses        = "container_processes"
	mThreads          = "container_threads"
	mThreadsMax       = "container_threads_max"
	mFileDescriptors  = "container_file_descriptors"
	mSockets          = "container_sockets"
	mStartTime        = "container_start_time_seconds"
	mLastSeen         = "container_last_seen"
	mFsUsage          = "container_fs_usage_bytes"
	mFsLimit          = "container_fs_limit_bytes"
	mFsInodesTotal    = "container_fs_inodes_total"
	mFsInodesFree     = "container_fs_inodes_free"
	mFsReads          = "container_fs_reads_total"
	mFsReadBytes      = "container_fs_reads_bytes_total"
	mFsWrites         = "container_fs_writes_total"
	mFsWriteBytes     = "container_fs_writes_bytes_total"
	mBlkio            = "container_blkio_device_usage_total"
	mNetRxBytes       = "container_network_receive_bytes_total"
	mNetRxPackets     = "container_network_receive_packets_total"
	mNetRxErrors      = "container_network_receive_errors_total"
	mNetRxDropped     = "container_network_receive_packets_dropped_total"
	mNetTxBytes       = "container_network_transmit_bytes_total"
	mNetTxPackets     = "container_network_transmit_packets_total"
	mNetTxErrors      = "container_network_transmit_errors_total"
	mNetTxDropped     = "container_network_transmit_packets_dropped_total"
	mSpecCPUPeriod    = "container_spec_cpu_period"
	mSpecCPUShares    = "container_spec_cpu_shares"
	mSpecMemLimit     = "container_spec_memory_limit_bytes"
	mSpecMemSwapLimit = "container_spec_memory_swap_limit_bytes"
)

// metricsAgentWait is how long a sandbox's agent has to answer a
// metrics scrape.
const metricsAgentWait = 10 * time.Second

const (
	counter = runtimeapi.MetricType_COUNTER
	gauge   = runtimeapi.MetricType_GAUGE
)

// metricDefs are the metrics ListMetricDescriptors describes, each with
// its type and help as cAdvisor has them. Not described, as no VM
// measures them: hugetlb usage, pressure stall times, the CFS quota and
// memory reservation specs, ulimits (critest lists them as not yet
// implemented by every runtime).
var metricDefs = []struct {
	desc *runtimeapi.MetricDescriptor
	typ  runtimeapi.MetricType
}{
	{&runtimeapi.MetricDescriptor{Name: mCPUUsage, Help: "Cumulative cpu time consumed in seconds.", LabelKeys: cpuLabelKeys}, counter},
	{&runtimeapi.MetricDescriptor{Name: mCPUUser, Help: "Cumulative user cpu time consumed in seconds.", LabelKeys: baseLabelKeys}, counter},
	{&runtimeapi.MetricDescriptor{Name: mCPUSystem, Help: "Cumulative system cpu time consumed in seconds.", LabelKeys: baseLabelKeys}, counter},
	{&runtimeapi.MetricDescriptor{Name: mCFSPeriods, Help: "Number of elapsed enforcement period intervals.", LabelKeys: baseLabelKeys}, counter},
	{&runtimeapi.MetricDescriptor{Name: mCFSThrottled, Help: "Number of throttled period intervals.", LabelKeys: baseLabelKeys}, counter},
	{&runtimeapi.MetricDescriptor{Name: mCFSThrottledSecs, Help: "Total time duration the container has been throttled.", LabelKeys: baseLabelKeys}, counter},
	{&runtimeapi.MetricDescriptor{Name: mMemWorkingSet, Help: "Current working set in bytes.", LabelKeys: baseLabelKeys}, gauge},
	{&runtimeapi.MetricDescriptor{Name: mMemUsage, Help: "Current memory usage in bytes, including all memory regardless of when it was accessed", LabelKeys: baseLabelKeys}, gauge},
	{&runtimeapi.MetricDescriptor{Name: mMemRSS, Help: "Size of RSS in bytes.", LabelKeys: baseLabelKeys}, gauge},
	{&runtimeapi.MetricDescriptor{Name: mMemCache, Help: "Number of bytes of page cache memory.", LabelKeys: baseLabelKeys}, gauge},
	{&runtimeapi.MetricDescriptor{Name: mMemMapped, Help: "Size of memory mapped files in bytes.", LabelKeys: baseLabelKeys}, gauge},
	{&runtimeapi.MetricDescriptor{Name: mMemKernel, Help: "Size of kernel memory allocated in bytes.", LabelKeys: baseLabelKeys}, gauge},
	{&runtimeapi.MetricDescriptor{Name: mMemSwap, Help: "Container swap usage in bytes.", LabelKeys: baseLabelKeys}, gauge},
	{&runtimeapi.MetricDescriptor{Name: mMemMaxUsage, Help: "Maximum memory usage recorded in bytes", LabelKeys: baseLabelKeys}, gauge},
	{&runtimeapi.MetricDescriptor{Name: mMemFailcnt, Help: "Number of memory usage hits limits", LabelKeys: baseLabelKeys}, counter},
	{&runtimeapi.MetricDescriptor{Name: mMemFailures, Help: "Cumulative count of memory allocation failures.", LabelKeys: failureLabelKeys}, counter},
	{&runtimeapi.MetricDescriptor{Name: mOOMEvents, Help: "Count of out of memory events observed for the container", LabelKeys: baseLabelKeys}, counter},
	{&runtimeapi.MetricDescriptor{Name: mProcesses, Help: "Number of processes running inside the container.", LabelKeys: baseLabelKeys}, gauge},
	{&runtimeapi.MetricDescriptor{Name: mThreads, Help: "Number of threads running inside the container", LabelKeys: baseLabelKeys}, gauge},
	{&runtimeapi.MetricDescriptor{Name: mThreadsMax, Help: "Maximum number of threads allowed inside the container, infinity if value is zero", LabelKeys: baseLabelKeys}, gauge},
	{&runtimeapi.MetricDescriptor{Name: mFileDescriptors, Help: "Number of open file descriptors for the container.", LabelKeys: baseLabelKeys}, gauge},
	{&runtimeapi.MetricDescriptor{Name: mSockets, Help: "Number of open sockets for the container.", LabelKeys: baseLabelKeys}, gauge},
	{&runtimeapi.MetricDescriptor{Name: mStartTime, Help: "Start time of the container since unix epoch in seconds.", LabelKeys: baseLabelKeys}, gauge},
	{&runtimeapi.MetricDescriptor{Name: mLastSeen, Help: "Last time a container was seen by the exporter", LabelKeys: baseLabelKeys}, gauge},
	{&runtimeapi.MetricDescriptor{Name: mFsUsage, Help: "Number of bytes that are consumed by the container on this filesystem.", LabelKeys: deviceLabelKeys}, gauge},
	{&runtimeapi.MetricDescriptor{Name: mFsLimit, Help: "Number of bytes that can be consumed by the container on this filesystem.", LabelKeys: deviceLabelKeys}, gauge},
	{&runtimeapi.MetricDescriptor{Name: mFsInodesTotal, Help: "Number of Inodes", LabelKeys: deviceLabelKeys}, gauge},
	{&runtimeapi.MetricDescriptor{Name: mFsInodesFree, Help: "Number of available Inodes", LabelKeys: deviceLabelKeys}, gauge},
	{&runtimeapi.MetricDescriptor{Name: mFsReads, Help: "Cumulative count of reads completed", LabelKeys: deviceLabelKeys}, counter},
	{&runtimeapi.MetricDescriptor{Name: mFsReadBytes, Help: "Cumulative count of bytes read", LabelKeys: deviceLabelKeys}, counter},
	{&runtimeapi.MetricDescriptor{Name: mFsWrites, Help: "Cumulative count of writes completed", LabelKeys: deviceLabelKeys}, counter},
	{&runtimeapi.MetricDescriptor{Name: mFsWriteBytes, Help: "Cumulative count of bytes written", LabelKeys: deviceLabelKeys}, counter},
	{&runtimeapi.MetricDescriptor{Name: mBlkio, Help: "Blkio device bytes usage", LabelKeys: blkioLabelKeys}, counter},
	{&runtimeapi.MetricDescriptor{Name: mNetRxBytes, Help: "Cumulative count of bytes received", LabelKeys: interfaceLabelKeys}, counter},
	{&runtimeapi.MetricDescriptor{Name: mNetRxPackets, Help: "Cumulative count of packets received", LabelKeys: interfaceLabelKeys}, counter},
	{&runtimeapi.MetricDescriptor{Name: mNetRxErrors, Help: "Cumulative count of errors encountered while receiving", LabelKeys: interfaceLabelKeys}, counter},
	{&runtimeapi.MetricDescriptor{Name: mNetRxDropped, Help: "Cumulative count of packets dropped while receiving", LabelKeys: interfaceLabelKeys}, counter},
	{&runtimeapi.MetricDescriptor{Name: mNetTxBytes, Help: "Cumulative count of bytes transmitted", LabelKeys: interfaceLabelKeys}, counter},
	{&runtimeapi.MetricDescriptor{Name: mNetTxPackets, Help: "Cumulative count of packets transmitted", LabelKeys: interfaceLabelKeys}, counter},
	{&runtimeapi.MetricDescriptor{Name: mNetTxErrors, Help: "Cumulative count of errors encountered while transmitting", LabelKeys: interfaceLabelKeys}, counter},
	{&runtimeapi.MetricDescriptor{Name: mNetTxDropped, Help: "Cumulative count of packets dropped while transmitting", LabelKeys: interfaceLabelKeys}, counter},
	{&runtimeapi.MetricDescriptor{Name: mSpecCPUPeriod, Help: "CPU period of the container.", LabelKeys: baseLabelKeys}, gauge},
	{&runtimeapi.MetricDescriptor{Name: mSpecCPUShares, Help: "CPU share of the container.", LabelKeys: baseLabelKeys}, gauge},
	{&runtimeapi.MetricDescriptor{Name: mSpecMemLimit, Help: "Memory limit for the container.", LabelKeys: baseLabelKeys}, gauge},
	{&runtimeapi.MetricDescriptor{Name: mSpecMemSwapLimit, Help: "Memory swap limit for the container.", LabelKeys: baseLabelKeys}, gauge},
}

// metricTypes are metricDefs' types by name. COUNTER is the enum's zero,
// so every metric is listed, the gauges too.
var metricTypes = func() map[string]runtimeapi.MetricType {
	m := make(map[string]runtimeapi.MetricType, len(metricDefs))
	for _, d := range metricDefs {
		m[d.desc.Name] = d.typ
	}
	return m
}()

// ListMetricDescriptors describes the metrics ListPodSandboxMetrics
// reports.
func (s *Service) ListMetricDescriptors(context.Context, *runtimeapi.ListMetricDescriptorsRequest) (*runtimeapi.ListMetricDescriptorsResponse, error) {
	out := make([]*runtimeapi.MetricDescriptor, len(metricDefs))
	for i, d := range metricDefs {
		out[i] = &runtimeapi.MetricDescriptor{Name: d.desc.Name, Help: d.desc.Help, LabelKeys: append([]string(nil), d.desc.LabelKeys...)}
	}
	return &runtimeapi.ListMetricDescriptorsResponse{Descriptors: out}, nil
}

// ListPodSandboxMetrics reports the ready sandboxes whose agent answers.
func (s *Service) ListPodSandboxMetrics(ctx context.Context, _ *runtimeapi.ListPodSandboxMetricsRequest) (*runtimeapi.ListPodSandboxMetricsResponse, error) {
	m, err := s.listSandboxMetrics(ctx)
	if err != nil {
		return nil, err
	}
	return &runtimeapi.ListPodSandboxMetricsResponse{PodMetrics: m}, nil
}

// StreamPodSandboxMetrics is ListPodSandboxMetrics in pages.
func (s *Service) StreamPodSandboxMetrics(_ *runtimeapi.StreamPodSandboxMetricsRequest, stream runtimeapi.RuntimeService_StreamPodSandboxMetricsServer) error {
	m, err := s.listSandboxMetrics(stream.Context())
	if err != nil {
		return err
	}
	return sendPages(m, func(p []*runtimeapi.PodSandboxMetrics) error {
		return stream.Send(&runtimeapi.StreamPodSandboxMetricsResponse{PodSandboxMetrics: p})
	})
}

// listSandboxMetrics skips, with a warning, a sandbox whose stats fail
// (its agent does not answer, its record does not decode): kubelet's
// collector drops the whole scrape when the call fails, so one sick VM
// would otherwise hide every pod's metrics. The sandbox is left out
// entirely rather than reported without measurements, as
// ListPodSandboxStats leaves it out; kubelet takes a missing pod as
// nothing to report. A sandbox that is not ready, or whose VM has not
// booted, has nothing measured and is left out too.
func (s *Service) listSandboxMetrics(ctx context.Context) ([]*runtimeapi.PodSandboxMetrics, error) {
	sbs, err := s.st.Sandboxes(visibleSandboxes(ctx, nil))
	if err != nil {
		return nil, err
	}
	var out []*runtimeapi.PodSandboxMetrics
	for _, sb := range sbs {
		sb = s.ctl.Refresh(ctx, sb)
		if sb.State != store.SandboxReady {
			continue
		}
		m, err := s.sandboxMetrics(ctx, sb)
		if err != nil {
			sbLog(sb.ID).Warn("metrics", "err", err)
			continue
		}
		if m != nil {
			out = append(out, m)
		}
	}
	return out, nil
}

// sandboxMetrics is one sandbox's metrics; nil when its VM is not
// running. The agent gets metricsAgentWait to answer, so a hung VM costs
// a scrape that long, not kubelet's whole request timeout.
func (s *Service) sandboxMetrics(ctx context.Context, sb store.Sandbox) (*runtimeapi.PodSandboxMetrics, error) {
	cfg, err := podConfig(sb)
	if err != nil {
		return nil, err
	}
	actx, cancel := context.WithTimeout(ctx, metricsAgentWait)
	defer cancel()
	vm, err := s.vmStats(actx, sb)
	if err != nil || vm == nil {
		return nil, err
	}
	st, err := s.sandboxStatsOf(sb, cfg, vm)
	if err != nil {
		return nil, err
	}
	cs, err := s.st.Containers(func(c *store.Container) bool { return c.SandboxID == sb.ID })
	if err != nil {
		return nil, err
	}
	ctrs := make(map[string]store.Container, len(cs))
	for _, c := range cs {
		ctrs[c.ID] = c
	}
	agentCtrs := map[string]*agentapi.ContainerStats{}
	for _, c := range vm.GetContainers() {
		agentCtrs[c.GetContainerId()] = c
	}

	ns, pod := cfg.GetMetadata().GetNamespace(), cfg.GetMetadata().GetName()
	ts := statsTime(vm)
	seen := uint64(time.Unix(0, ts).Unix())
	out := &runtimeapi.PodSandboxMetrics{PodSandboxId: sb.ID}

	// The pod: its VM, measured by the guest as a whole (the pod's
	// cgroup under cAdvisor).
	pm := metricSet{ts: ts, labels: []string{"", sb.ID, "", "", ns, pod}}
	lx := st.GetLinux()
	pm.cpu(lx.GetCpu())
	pm.memory(lx.GetMemory())
	if p := lx.GetProcess().GetProcessCount(); p != nil {
		pm.add(mProcesses, p.GetValue())
	}
	if !sb.CreatedAt.IsZero() {
		pm.add(mStartTime, uint64(sb.CreatedAt.Unix()))
	}
	pm.add(mLastSeen, seen)
	if c := vm.GetCpu(); c != nil {
		pm.add(mCPUUser, c.GetUserNanoseconds()/uint64(time.Second))
		pm.add(mCPUSystem, c.GetSystemNanoseconds()/uint64(time.Second))
	}
	if m := vm.GetMemory(); m != nil {
		pm.memoryDetail(memoryDetail{m.GetCacheBytes(), m.GetMappedFileBytes(), m.GetKernelBytes(), m.GetSwapBytes(), m.GetOomKills(), m.GetPageFaults(), m.GetMajorPageFaults()})
	}
	if tk := vm.GetTasks(); tk != nil {
		pm.add(mThreads, tk.GetThreads())
		pm.add(mThreadsMax, tk.GetThreadsMax())
		pm.add(mFileDescriptors, tk.GetFileDescriptors())
		pm.add(mSockets, tk.GetSockets())
	}
	// The guest's NICs: the pod's network, as cAdvisor reports it on
	// the pod (its containers share it).
	for _, n := range guestDevices(vm.GetNetworks(), (*agentapi.NetworkStats).GetName) {
		name := n.GetName()
		pm.add(mNetRxBytes, n.GetRxBytes(), name)
		pm.add(mNetRxPackets, n.GetRxPackets(), name)
		pm.add(mNetRxErrors, n.GetRxErrors(), name)
		pm.add(mNetRxDropped, n.GetRxDropped(), name)
		pm.add(mNetTxBytes, n.GetTxBytes(), name)
		pm.add(mNetTxPackets, n.GetTxPackets(), name)
		pm.add(mNetTxErrors, n.GetTxErrors(), name)
		pm.add(mNetTxDropped, n.GetTxDropped(), name)
	}
	for _, d := range guestDevices(vm.GetDisks(), (*agentapi.DiskStats).GetDevice) {
		dev := d.GetDevice()
		pm.add(mFsReads, d.GetReads(), dev)
		pm.add(mFsReadBytes, d.GetReadBytes(), dev)
		pm.add(mFsWrites, d.GetWrites(), dev)
		pm.add(mFsWriteBytes, d.GetWriteBytes(), dev)
		major, minor := strconv.FormatUint(uint64(d.GetMajor()), 10), strconv.FormatUint(uint64(d.GetMinor()), 10)
		pm.add(mBlkio, d.GetReadBytes(), dev, major, minor, "Read")
		pm.add(mBlkio, d.GetWriteBytes(), dev, major, minor, "Write")
	}
	// The guest's root filesystem, which all the containers share, is
	// reported on the pod alone (on each container, a sum by pod would
	// count it once per container). Its device label is the guest's
	// mount point: the host knows no device name for it.
	// Only the path asked for ("/", vmStats): the answer is the guest's.
	for _, fs := range vm.GetFilesystems() {
		if fs.GetError() != "" || fs.GetPath() != "/" {
			continue
		}
		pm.add(mFsUsage, fs.GetUsedBytes(), fs.GetPath())
		pm.add(mFsLimit, fs.GetCapacityBytes(), fs.GetPath())
		if fs.GetInodes() > 0 {
			pm.add(mFsInodesTotal, fs.GetInodes(), fs.GetPath())
			pm.add(mFsInodesFree, fs.GetInodes()-min(fs.GetInodesUsed(), fs.GetInodes()), fs.GetPath())
		}
	}
	out.Metrics = pm.metrics

	for _, cst := range lx.GetContainers() {
		id := cst.GetAttributes().GetId()
		c, ok := ctrs[id]
		if !ok { // removed since sandboxStatsOf listed it
			continue
		}
		cm := metricSet{ts: ts, labels: []string{cst.GetAttributes().GetMetadata().GetName(), id, c.ImageRef, id, ns, pod}}
		cm.cpu(cst.GetCpu())
		cm.memory(cst.GetMemory())
		if a := agentCtrs[id]; a != nil {
			cm.add(mProcesses, uint64(a.GetProcesses()))
			cm.add(mCPUUser, a.GetCpuUserNanoseconds()/uint64(time.Second))
			cm.add(mCPUSystem, a.GetCpuSystemNanoseconds()/uint64(time.Second))
			cm.add(mThreads, a.GetThreads())
			cm.add(mFileDescriptors, a.GetFileDescriptors())
			cm.add(mSockets, a.GetSockets())
			cm.cgroup(a.GetCgroup())
		}
		if tk := vm.GetTasks(); tk != nil {
			cm.add(mThreadsMax, tk.GetThreadsMax())
		}
		if !c.StartedAt.IsZero() {
			cm.add(mStartTime, uint64(c.StartedAt.Unix()))
		}
		cm.add(mLastSeen, seen)
		if cfg, err := ctrConfig(c); err == nil {
			cm.spec(cfg.GetLinux().GetResources())
		}
		out.ContainerMetrics = append(out.ContainerMetrics, &runtimeapi.ContainerMetrics{ContainerId: id, Metrics: cm.metrics})
	}
	return out, nil
}

// metricSet gathers one pod's or container's metrics: its labels, then
// each metric's own (cpu, device), in the descriptors' order.
type metricSet struct {
	ts      int64
	labels  []string
	metrics []*runtimeapi.Metric
}

func (m *metricSet) add(name string, v uint64, extra ...string) {
	m.metrics = append(m.metrics, &runtimeapi.Metric{
		Name:        name,
		Timestamp:   m.ts,
		MetricType:  metricTypes[name],
		LabelValues: append(append([]string(nil), m.labels...), extra...),
		Value:       u64(v),
	})
}

// cpu: a Metric's value is an integer, so the CPU time is in whole
// seconds, rounded down (it goes back only where the nanoseconds do: a
// container's is its live processes', which drops when one exits).
func (m *metricSet) cpu(c *runtimeapi.CpuUsage) {
	if v := c.GetUsageCoreNanoSeconds(); v != nil {
		m.add(mCPUUsage, v.GetValue()/uint64(time.Second), "total")
	}
}

func (m *metricSet) memory(mem *runtimeapi.MemoryUsage) {
	if v := mem.GetWorkingSetBytes(); v != nil {
		m.add(mMemWorkingSet, v.GetValue())
	}
	if v := mem.GetUsageBytes(); v != nil {
		m.add(mMemUsage, v.GetValue())
	}
	if v := mem.GetRssBytes(); v != nil {
		m.add(mMemRSS, v.GetValue())
	}
}

// cgroup adds what a container's cgroup in the guest counts: a
// container with a memory limit or a CPU quota has one.
func (m *metricSet) cgroup(cg *agentapi.CgroupStats) {
	if cg.GetMemory() {
		m.memoryDetail(memoryDetail{cg.GetCacheBytes(), cg.GetMappedFileBytes(), cg.GetKernelBytes(), cg.GetSwapBytes(), cg.GetOomKills(), cg.GetPageFaults(), cg.GetMajorPageFaults()})
		m.add(mMemMaxUsage, cg.GetMemoryPeakBytes())
		m.add(mMemFailcnt, cg.GetMemoryLimitHits())
	}
	if cg.GetCpu() {
		m.add(mCFSPeriods, cg.GetCfsPeriods())
		m.add(mCFSThrottled, cg.GetCfsThrottledPeriods())
		m.add(mCFSThrottledSecs, cg.GetCfsThrottledNanoseconds()/uint64(time.Second))
	}
}

// spec adds a container's configured resources as cAdvisor reports its
// cgroup's: the CFS period (the kernel's 100 ms unless set), the shares,
// the memory and swap limits (0: none).
func (m *metricSet) spec(r *runtimeapi.LinuxContainerResources) {
	period := r.GetCpuPeriod()
	if period <= 0 {
		period = 100_000
	}
	m.add(mSpecCPUPeriod, uint64(period))
	m.add(mSpecCPUShares, uint64(max(r.GetCpuShares(), 0)))
	m.add(mSpecMemLimit, uint64(max(r.GetMemoryLimitInBytes(), 0)))
	m.add(mSpecMemSwapLimit, uint64(max(r.GetMemorySwapLimitInBytes(), 0)))
}

// memoryDetail is what the guest counts of a VM's or a container
// cgroup's memory beyond usage and RSS.
type memoryDetail struct{ cache, mapped, kernel, swap, oomKills, faults, majorFaults uint64 }

func (m *metricSet) memoryDetail(d memoryDetail) {
	m.add(mMemCache, d.cache)
	m.add(mMemMapped, d.mapped)
	m.add(mMemKernel, d.kernel)
	m.add(mMemSwap, d.swap)
	m.add(mOOMEvents, d.oomKills)
	// Neither a VM nor a container cgroup has a cgroup of ours below it:
	// its faults are its whole hierarchy's as well as its own.
	for _, scope := range []string{"container", "hierarchy"} {
		m.add(mMemFailures, d.faults, "pgfault", scope)
		m.add(mMemFailures, d.majorFaults, "pgmajfault", scope)
	}
}

// maxGuestDevices bounds the NICs and disks of one VM that become label
// values: the guest names them, and a hostile one must not blow up
// kubelet's series (a real VM has a few).
const maxGuestDevices = 16

// guestDevices are the first maxGuestDevices of a guest's devices whose
// name is a plausible device name (1-32 bytes of [A-Za-z0-9._-], as
// Linux interface and block device names are), each name once; the rest
// are dropped.
func guestDevices[T any](ds []T, name func(T) string) []T {
	var out []T
	seen := map[string]bool{}
	for _, d := range ds {
		n := name(d)
		if len(out) == maxGuestDevices {
			break
		}
		if seen[n] || !plausibleDeviceName(n) {
			continue
		}
		seen[n] = true
		out = append(out, d)
	}
	return out
}

func plausibleDeviceName(n string) bool {
	if n == "" || len(n) > 32 {
		return false
	}
	for _, c := range n {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '-') {
			return false
		}
	}
	return true
}

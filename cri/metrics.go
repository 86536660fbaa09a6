package cri

import (
	"context"
	"time"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

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
// Every value is taken from the CRI stats stats.go makes of the agent's
// one Stats answer per VM (sandboxStatsOf, containerStatsOf), so these
// agree with ContainerStats and PodSandboxStats, and so with kubelet's
// /stats/summary and /metrics/resource. What the agent does not measure
// (network, disk I/O, throttling, page cache, per-container limits) is
// not described and not reported.
//
// The labels are those kubelet gives cAdvisor's containers: container,
// id, image, name, namespace, pod. A container's are its name, its ID,
// its image reference, its ID again (cAdvisor's name under containerd is
// the container's ID), its pod's namespace and name. The pod itself (its
// VM: cAdvisor's pod cgroup) has container="", image="" and name="", and
// the sandbox's ID as id; recording rules tell the two apart by
// container!="" or image!="".

// Label keys: the base ones sorted, then a metric's own (cpu, device);
// a Metric's label values come in the same order.
var (
	baseLabelKeys   = []string{"container", "id", "image", "name", "namespace", "pod"}
	cpuLabelKeys    = append(append([]string(nil), baseLabelKeys...), "cpu")
	deviceLabelKeys = append(append([]string(nil), baseLabelKeys...), "device")
)

// The metrics' names.
const (
	mCPUUsage      = "container_cpu_usage_seconds_total"
	mMemWorkingSet = "container_memory_working_set_bytes"
	mMemUsage      = "container_memory_usage_bytes"
	mMemRSS        = "container_memory_rss"
	mProcesses     = "container_processes"
	mStartTime     = "container_start_time_seconds"
	mFsUsage       = "container_fs_usage_bytes"
	mFsLimit       = "container_fs_limit_bytes"
	mFsInodesTotal = "container_fs_inodes_total"
	mFsInodesFree  = "container_fs_inodes_free"
)

// metricsAgentWait is how long a sandbox's agent has to answer a
// metrics scrape.
const metricsAgentWait = 10 * time.Second

// metricDefs are the metrics ListMetricDescriptors describes, each with
// its type (cAdvisor's): the CPU time is a counter, the rest are gauges.
var metricDefs = []struct {
	desc *runtimeapi.MetricDescriptor
	typ  runtimeapi.MetricType
}{
	{&runtimeapi.MetricDescriptor{Name: mCPUUsage, Help: "Cumulative cpu time consumed in seconds.", LabelKeys: cpuLabelKeys}, runtimeapi.MetricType_COUNTER},
	{&runtimeapi.MetricDescriptor{Name: mMemWorkingSet, Help: "Current working set in bytes.", LabelKeys: baseLabelKeys}, runtimeapi.MetricType_GAUGE},
	{&runtimeapi.MetricDescriptor{Name: mMemUsage, Help: "Current memory usage in bytes, including all memory regardless of when it was accessed", LabelKeys: baseLabelKeys}, runtimeapi.MetricType_GAUGE},
	{&runtimeapi.MetricDescriptor{Name: mMemRSS, Help: "Size of RSS in bytes.", LabelKeys: baseLabelKeys}, runtimeapi.MetricType_GAUGE},
	{&runtimeapi.MetricDescriptor{Name: mProcesses, Help: "Number of processes running inside the container.", LabelKeys: baseLabelKeys}, runtimeapi.MetricType_GAUGE},
	{&runtimeapi.MetricDescriptor{Name: mStartTime, Help: "Start time of the container since unix epoch in seconds.", LabelKeys: baseLabelKeys}, runtimeapi.MetricType_GAUGE},
	{&runtimeapi.MetricDescriptor{Name: mFsUsage, Help: "Number of bytes that are consumed by the container on this filesystem.", LabelKeys: deviceLabelKeys}, runtimeapi.MetricType_GAUGE},
	{&runtimeapi.MetricDescriptor{Name: mFsLimit, Help: "Number of bytes that can be consumed by the container on this filesystem.", LabelKeys: deviceLabelKeys}, runtimeapi.MetricType_GAUGE},
	{&runtimeapi.MetricDescriptor{Name: mFsInodesTotal, Help: "Number of Inodes", LabelKeys: deviceLabelKeys}, runtimeapi.MetricType_GAUGE},
	{&runtimeapi.MetricDescriptor{Name: mFsInodesFree, Help: "Number of available Inodes", LabelKeys: deviceLabelKeys}, runtimeapi.MetricType_GAUGE},
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
	procs := map[string]uint32{}
	for _, c := range vm.GetContainers() {
		procs[c.GetContainerId()] = c.GetProcesses()
	}

	ns, pod := cfg.GetMetadata().GetNamespace(), cfg.GetMetadata().GetName()
	ts := statsTime(vm)
	out := &runtimeapi.PodSandboxMetrics{PodSandboxId: sb.ID}

	// The pod: its VM.
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
	// The guest's root filesystem, which all the containers share, is
	// reported on the pod alone (on each container, a sum by pod would
	// count it once per container). Its device label is the guest's
	// mount point: the host knows no device name for it.
	for _, fs := range vm.GetFilesystems() {
		if fs.GetError() != "" {
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
		if n, ok := procs[id]; ok {
			cm.add(mProcesses, uint64(n))
		}
		if !c.StartedAt.IsZero() {
			cm.add(mStartTime, uint64(c.StartedAt.Unix()))
		}
		if len(cm.metrics) > 0 {
			out.ContainerMetrics = append(out.ContainerMetrics, &runtimeapi.ContainerMetrics{ContainerId: id, Metrics: cm.metrics})
		}
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

package cri

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/macvz/macvz/runtime/agentapi"
)

// twoCtrPod runs a pod of two started containers, app and sidecar.
func (f *fake) twoCtrPod(t *testing.T, name string) (sbID, app, sidecar string) {
	t.Helper()
	pod := hostPod(t, name)
	sbID = f.runPod(t, pod, "guest")
	for i, n := range []string{"app", "sidecar"} {
		id := f.createCtr(t, sbID, pod, &runtimeapi.ContainerConfig{Metadata: &runtimeapi.ContainerMetadata{Name: n}, LogPath: n + "/0.log"})
		if _, err := f.StartContainer(context.Background(), &runtimeapi.StartContainerRequest{ContainerId: id}); err != nil {
			t.Fatalf("StartContainer %s: %v", n, err)
		}
		if i == 0 {
			app = id
		} else {
			sidecar = id
		}
	}
	return sbID, app, sidecar
}

// guestStats is what a pod's agent measures: its VM, and app and sidecar.
func guestStats(ts int64, app, sidecar string) *agentapi.StatsResponse {
	return &agentapi.StatsResponse{
		TimestampUnixNano: ts,
		Cpu:               &agentapi.CPUStats{UsageCoreNanoseconds: 7_900_000_000, NumCpu: 2, UserNanoseconds: 5_100_000_000, SystemNanoseconds: 2_800_000_000},
		Memory: &agentapi.MemoryStats{TotalBytes: 1 << 30, AvailableBytes: 700 << 20, UsageBytes: 300 << 20, WorkingSetBytes: 200 << 20, RssBytes: 150 << 20,
			CacheBytes: 100 << 20, MappedFileBytes: 30 << 20, KernelBytes: 20 << 20, PageFaults: 5000, MajorPageFaults: 40, OomKills: 1},
		Networks: []*agentapi.NetworkStats{{Name: "eth0", RxBytes: 1000, RxPackets: 10, RxErrors: 1, RxDropped: 2, TxBytes: 2000, TxPackets: 20, TxErrors: 3, TxDropped: 4}},
		Disks:    []*agentapi.DiskStats{{Device: "vda", Major: 254, Minor: 0, Reads: 7, ReadBytes: 7 << 12, Writes: 9, WriteBytes: 9 << 12}},
		Tasks:    &agentapi.TaskStats{Threads: 80, ThreadsMax: 7000, FileDescriptors: 300, Sockets: 12},
		Filesystems: []*agentapi.FilesystemStats{
			{Path: "/", CapacityBytes: 10 << 30, UsedBytes: 2 << 30, AvailableBytes: 8 << 30, Inodes: 1000, InodesUsed: 400},
			{Path: "/missing", Error: "no such file or directory"},
			{Path: "/not-asked", CapacityBytes: 1, UsedBytes: 1}, // left out: the host asked for "/"
		},
		Containers: []*agentapi.ContainerStats{
			{ContainerId: app, CpuUsageCoreNanoseconds: 2_500_000_000, MemoryRssBytes: 50 << 20, Processes: 3,
				CpuUserNanoseconds: 1_500_000_000, CpuSystemNanoseconds: 1_000_000_000, Threads: 5, FileDescriptors: 9, Sockets: 2,
				Cgroup: &agentapi.CgroupStats{Memory: true, Cpu: true, MemoryUsageBytes: 60 << 20, MemoryPeakBytes: 70 << 20, CacheBytes: 8 << 20,
					MappedFileBytes: 1 << 20, KernelBytes: 2 << 20, MemoryLimitHits: 3, OomKills: 1, PageFaults: 900, MajorPageFaults: 4,
					CfsPeriods: 100, CfsThrottledPeriods: 10, CfsThrottledNanoseconds: 3_000_000_000}},
			{ContainerId: sidecar, CpuUsageCoreNanoseconds: 900_000_000, MemoryRssBytes: 10 << 20, Processes: 1},
		},
	}
}

// sample is one metric as kubelet's collector makes a Prometheus sample
// of it.
type sample struct {
	typ   runtimeapi.MetricType
	ts    int64
	value uint64
}

// samples are a response's metrics by name and labels (key=value, in
// the descriptor's order), checked as kubelet's collector and the
// Prometheus registry check them: a described name, as many values as
// keys, no two with the same name and labels, a value.
func samples(t *testing.T, descs []*runtimeapi.MetricDescriptor, pms []*runtimeapi.PodSandboxMetrics) map[string]sample {
	t.Helper()
	keys := map[string][]string{}
	for _, d := range descs {
		keys[d.GetName()] = d.GetLabelKeys()
	}
	out := map[string]sample{}
	add := func(where string, m *runtimeapi.Metric) {
		ks, ok := keys[m.GetName()]
		if !ok {
			t.Errorf("%s: %s has no descriptor", where, m.GetName())
			return
		}
		if len(ks) != len(m.GetLabelValues()) {
			t.Errorf("%s: %s has %d label values for %d keys %v", where, m.GetName(), len(m.GetLabelValues()), len(ks), ks)
			return
		}
		if m.GetValue() == nil {
			t.Errorf("%s: %s has no value", where, m.GetName())
		}
		var ls []string
		for i, k := range ks {
			ls = append(ls, k+"="+m.GetLabelValues()[i])
		}
		key := m.GetName() + "{" + strings.Join(ls, ",") + "}"
		if _, dup := out[key]; dup {
			t.Errorf("%s: %s twice", where, key)
		}
		out[key] = sample{typ: m.GetMetricType(), ts: m.GetTimestamp(), value: m.GetValue().GetValue()}
	}
	for _, pm := range pms {
		for _, m := range pm.GetMetrics() {
			add("pod "+pm.GetPodSandboxId(), m)
		}
		for _, cm := range pm.GetContainerMetrics() {
			for _, m := range cm.GetMetrics() {
				add("container "+cm.GetContainerId(), m)
			}
		}
	}
	return out
}

func (f *fake) descriptors(t *testing.T) []*runtimeapi.MetricDescriptor {
	t.Helper()
	r, err := f.ListMetricDescriptors(context.Background(), &runtimeapi.ListMetricDescriptorsRequest{})
	if err != nil {
		t.Fatalf("ListMetricDescriptors: %v", err)
	}
	return r.GetDescriptors()
}

func (f *fake) podMetrics(t *testing.T) []*runtimeapi.PodSandboxMetrics {
	t.Helper()
	r, err := f.ListPodSandboxMetrics(context.Background(), &runtimeapi.ListPodSandboxMetricsRequest{})
	if err != nil {
		t.Fatalf("ListPodSandboxMetrics: %v", err)
	}
	return r.GetPodMetrics()
}

// A pod of two containers gives the pod's (its VM's) metrics and each
// container's, with cAdvisor's labels, the guest's timestamp, and
// exactly the described metrics.
func TestPodSandboxMetricsTwoContainers(t *testing.T) {
	f := newFake(t)
	sbID, app, sidecar := f.twoCtrPod(t, "web")
	ts := time.Now().Add(-time.Second).UnixNano()
	f.shims.SetStats(func(dir string) (*agentapi.StatsResponse, error) {
		if dir != f.ctl.Dir(sbID) {
			t.Errorf("Stats of the agent in %s", dir)
		}
		return guestStats(ts, app, sidecar), nil
	})
	descs := f.descriptors(t)
	pms := f.podMetrics(t)
	if len(pms) != 1 || pms[0].GetPodSandboxId() != sbID {
		t.Fatalf("pod metrics: %v, want the sandbox %s's", pms, sbID)
	}
	got := samples(t, descs, pms)

	sb, err := f.st.Sandbox(sbID)
	if err != nil {
		t.Fatal(err)
	}
	appRec, err := f.st.Container(app)
	if err != nil {
		t.Fatal(err)
	}
	sideRec, err := f.st.Container(sidecar)
	if err != nil {
		t.Fatal(err)
	}
	if appRec.ImageRef == "" || appRec.StartedAt.IsZero() {
		t.Fatalf("app's record has no image reference or start: %+v", appRec)
	}
	podL := "container=,id=" + sbID + ",image=,name=,namespace=ns,pod=web"
	appL := "container=app,id=" + app + ",image=" + appRec.ImageRef + ",name=" + app + ",namespace=ns,pod=web"
	sideL := "container=sidecar,id=" + sidecar + ",image=" + sideRec.ImageRef + ",name=" + sidecar + ",namespace=ns,pod=web"
	seen := uint64(time.Unix(0, ts).Unix())
	want := map[string]sample{
		// The pod: the VM's CPU and memory, its containers' processes,
		// the guest's root filesystem (the failed path is left out).
		"container_cpu_usage_seconds_total{" + podL + ",cpu=total}":                                     {counter, ts, 7},
		"container_memory_working_set_bytes{" + podL + "}":                                              {gauge, ts, 200 << 20},
		"container_memory_usage_bytes{" + podL + "}":                                                    {gauge, ts, 300 << 20},
		"container_memory_rss{" + podL + "}":                                                            {gauge, ts, 150 << 20},
		"container_processes{" + podL + "}":                                                             {gauge, ts, 4},
		"container_start_time_seconds{" + podL + "}":                                                    {gauge, ts, uint64(sb.CreatedAt.Unix())},
		"container_fs_usage_bytes{" + podL + ",device=/}":                                               {gauge, ts, 2 << 30},
		"container_fs_limit_bytes{" + podL + ",device=/}":                                               {gauge, ts, 10 << 30},
		"container_fs_inodes_total{" + podL + ",device=/}":                                              {gauge, ts, 1000},
		"container_fs_inodes_free{" + podL + ",device=/}":                                               {gauge, ts, 600},
		"container_last_seen{" + podL + "}":                                                             {gauge, ts, seen},
		"container_cpu_user_seconds_total{" + podL + "}":                                                {counter, ts, 5},
		"container_cpu_system_seconds_total{" + podL + "}":                                              {counter, ts, 2},
		"container_memory_cache{" + podL + "}":                                                          {gauge, ts, 100 << 20},
		"container_memory_mapped_file{" + podL + "}":                                                    {gauge, ts, 30 << 20},
		"container_memory_kernel_usage{" + podL + "}":                                                   {gauge, ts, 20 << 20},
		"container_memory_swap{" + podL + "}":                                                           {gauge, ts, 0},
		"container_oom_events_total{" + podL + "}":                                                      {counter, ts, 1},
		"container_memory_failures_total{" + podL + ",failure_type=pgfault,scope=container}":            {counter, ts, 5000},
		"container_memory_failures_total{" + podL + ",failure_type=pgfault,scope=hierarchy}":            {counter, ts, 5000},
		"container_memory_failures_total{" + podL + ",failure_type=pgmajfault,scope=container}":         {counter, ts, 40},
		"container_memory_failures_total{" + podL + ",failure_type=pgmajfault,scope=hierarchy}":         {counter, ts, 40},
		"container_threads{" + podL + "}":                                                               {gauge, ts, 80},
		"container_threads_max{" + podL + "}":                                                           {gauge, ts, 7000},
		"container_file_descriptors{" + podL + "}":                                                      {gauge, ts, 300},
		"container_sockets{" + podL + "}":                                                               {gauge, ts, 12},
		"container_network_receive_bytes_total{" + podL + ",interface=eth0}":                            {counter, ts, 1000},
		"container_network_receive_packets_total{" + podL + ",interface=eth0}":                          {counter, ts, 10},
		"container_network_receive_errors_total{" + podL + ",interface=eth0}":                           {counter, ts, 1},
		"container_network_receive_packets_dropped_total{" + podL + ",interface=eth0}":                  {counter, ts, 2},
		"container_network_transmit_bytes_total{" + podL + ",interface=eth0}":                           {counter, ts, 2000},
		"container_network_transmit_packets_total{" + podL + ",interface=eth0}":                         {counter, ts, 20},
		"container_network_transmit_errors_total{" + podL + ",interface=eth0}":                          {counter, ts, 3},
		"container_network_transmit_packets_dropped_total{" + podL + ",interface=eth0}":                 {counter, ts, 4},
		"container_fs_reads_total{" + podL + ",device=vda}":                                             {counter, ts, 7},
		"container_fs_reads_bytes_total{" + podL + ",device=vda}":                                       {counter, ts, 7 << 12},
		"container_fs_writes_total{" + podL + ",device=vda}":                                            {counter, ts, 9},
		"container_fs_writes_bytes_total{" + podL + ",device=vda}":                                      {counter, ts, 9 << 12},
		"container_blkio_device_usage_total{" + podL + ",device=vda,major=254,minor=0,operation=Read}":  {counter, ts, 7 << 12},
		"container_blkio_device_usage_total{" + podL + ",device=vda,major=254,minor=0,operation=Write}": {counter, ts, 9 << 12},
		// The containers: their process trees (RSS is their working
		// set, as ContainerStats says); CPU in whole seconds.
		"container_cpu_usage_seconds_total{" + appL + ",cpu=total}": {counter, ts, 2},
		"container_memory_working_set_bytes{" + appL + "}":          {gauge, ts, 50 << 20},
		"container_memory_usage_bytes{" + appL + "}":                {gauge, ts, 50 << 20},
		"container_memory_rss{" + appL + "}":                        {gauge, ts, 50 << 20},
		"container_processes{" + appL + "}":                         {gauge, ts, 3},
		"container_start_time_seconds{" + appL + "}":                {gauge, ts, uint64(appRec.StartedAt.Unix())},
		"container_last_seen{" + appL + "}":                         {gauge, ts, seen},
		"container_cpu_user_seconds_total{" + appL + "}":            {counter, ts, 1},
		"container_cpu_system_seconds_total{" + appL + "}":          {counter, ts, 1},
		"container_threads{" + appL + "}":                           {gauge, ts, 5},
		"container_threads_max{" + appL + "}":                       {gauge, ts, 7000},
		"container_file_descriptors{" + appL + "}":                  {gauge, ts, 9},
		"container_sockets{" + appL + "}":                           {gauge, ts, 2},
		// app has a cgroup of its own in the guest.
		"container_memory_cache{" + appL + "}":                                                  {gauge, ts, 8 << 20},
		"container_memory_mapped_file{" + appL + "}":                                            {gauge, ts, 1 << 20},
		"container_memory_kernel_usage{" + appL + "}":                                           {gauge, ts, 2 << 20},
		"container_memory_swap{" + appL + "}":                                                   {gauge, ts, 0},
		"container_memory_max_usage_bytes{" + appL + "}":                                        {gauge, ts, 70 << 20},
		"container_memory_failcnt{" + appL + "}":                                                {counter, ts, 3},
		"container_oom_events_total{" + appL + "}":                                              {counter, ts, 1},
		"container_memory_failures_total{" + appL + ",failure_type=pgfault,scope=container}":    {counter, ts, 900},
		"container_memory_failures_total{" + appL + ",failure_type=pgfault,scope=hierarchy}":    {counter, ts, 900},
		"container_memory_failures_total{" + appL + ",failure_type=pgmajfault,scope=container}": {counter, ts, 4},
		"container_memory_failures_total{" + appL + ",failure_type=pgmajfault,scope=hierarchy}": {counter, ts, 4},
		"container_cpu_cfs_periods_total{" + appL + "}":                                         {counter, ts, 100},
		"container_cpu_cfs_throttled_periods_total{" + appL + "}":                               {counter, ts, 10},
		"container_cpu_cfs_throttled_seconds_total{" + appL + "}":                               {counter, ts, 3},
		"container_spec_cpu_period{" + appL + "}":                                               {gauge, ts, 100000},
		"container_spec_cpu_shares{" + appL + "}":                                               {gauge, ts, 0},
		"container_spec_memory_limit_bytes{" + appL + "}":                                       {gauge, ts, 0},
		"container_spec_memory_swap_limit_bytes{" + appL + "}":                                  {gauge, ts, 0},
		"container_cpu_usage_seconds_total{" + sideL + ",cpu=total}":                            {counter, ts, 0},
		"container_memory_working_set_bytes{" + sideL + "}":                                     {gauge, ts, 10 << 20},
		"container_memory_usage_bytes{" + sideL + "}":                                           {gauge, ts, 10 << 20},
		"container_memory_rss{" + sideL + "}":                                                   {gauge, ts, 10 << 20},
		"container_processes{" + sideL + "}":                                                    {gauge, ts, 1},
		"container_start_time_seconds{" + sideL + "}":                                           {gauge, ts, uint64(sideRec.StartedAt.Unix())},
		"container_last_seen{" + sideL + "}":                                                    {gauge, ts, seen},
		"container_cpu_user_seconds_total{" + sideL + "}":                                       {counter, ts, 0},
		"container_cpu_system_seconds_total{" + sideL + "}":                                     {counter, ts, 0},
		"container_threads{" + sideL + "}":                                                      {gauge, ts, 0},
		"container_threads_max{" + sideL + "}":                                                  {gauge, ts, 7000},
		"container_file_descriptors{" + sideL + "}":                                             {gauge, ts, 0},
		"container_sockets{" + sideL + "}":                                                      {gauge, ts, 0},
		"container_spec_cpu_period{" + sideL + "}":                                              {gauge, ts, 100000},
		"container_spec_cpu_shares{" + sideL + "}":                                              {gauge, ts, 0},
		"container_spec_memory_limit_bytes{" + sideL + "}":                                      {gauge, ts, 0},
		"container_spec_memory_swap_limit_bytes{" + sideL + "}":                                 {gauge, ts, 0},
	}
	for k, w := range want {
		if g, ok := got[k]; !ok {
			t.Errorf("missing %s", k)
		} else if g != w {
			t.Errorf("%s = %+v, want %+v", k, g, w)
		}
	}
	for k := range got {
		if _, ok := want[k]; !ok {
			t.Errorf("unexpected %s", k)
		}
	}

	// Every descriptor is a metric produced, with its type.
	for _, d := range descs {
		found := false
		for k := range got {
			found = found || strings.HasPrefix(k, d.GetName()+"{")
		}
		if !found {
			t.Errorf("descriptor %s: no such metric produced", d.GetName())
		}
	}
	for _, pm := range pms {
		for _, cm := range pm.GetContainerMetrics() {
			if cm.GetContainerId() != app && cm.GetContainerId() != sidecar {
				t.Errorf("metrics of container %s", cm.GetContainerId())
			}
		}
	}

	// The streamed answer is the same.
	st := &metricsStream{ctx: context.Background()}
	if err := f.StreamPodSandboxMetrics(&runtimeapi.StreamPodSandboxMetricsRequest{}, st); err != nil {
		t.Fatalf("StreamPodSandboxMetrics: %v", err)
	}
	if sgot := samples(t, descs, st.got); len(sgot) != len(got) {
		t.Errorf("streamed %d samples, listed %d", len(sgot), len(got))
	}
}

// The descriptors are fixed (kubelet reads them once), and each has the
// base labels.
func TestListMetricDescriptors(t *testing.T) {
	s := &Service{}
	r1, err := s.ListMetricDescriptors(context.Background(), &runtimeapi.ListMetricDescriptorsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	// A caller changing the answer does not change the next one.
	r1.GetDescriptors()[0].LabelKeys[0] = "changed"
	r2, _ := s.ListMetricDescriptors(context.Background(), &runtimeapi.ListMetricDescriptorsRequest{})
	names := map[string]bool{}
	for _, d := range r2.GetDescriptors() {
		if names[d.GetName()] {
			t.Errorf("%s described twice", d.GetName())
		}
		names[d.GetName()] = true
		if d.GetHelp() == "" {
			t.Errorf("%s has no help", d.GetName())
		}
		if got := strings.Join(d.GetLabelKeys()[:6], ","); got != "container,id,image,name,namespace,pod" {
			t.Errorf("%s label keys %v", d.GetName(), d.GetLabelKeys())
		}
	}
}

// A sandbox whose agent does not answer is left out, and the call
// succeeds with the others': kubelet's collector drops the whole scrape
// on an error.
func TestPodSandboxMetricsAgentUnreachable(t *testing.T) {
	f := newFake(t)
	sick := f.runPod(t, hostPod(t, "sick"), "guest")
	sbID, app, sidecar := f.twoCtrPod(t, "web")
	ts := time.Now().UnixNano()
	f.shims.SetStats(func(dir string) (*agentapi.StatsResponse, error) {
		if dir == f.ctl.Dir(sick) {
			return nil, status.Error(codes.Unavailable, "the guest agent is gone")
		}
		return guestStats(ts, app, sidecar), nil
	})
	pms := f.podMetrics(t)
	if len(pms) != 1 || pms[0].GetPodSandboxId() != sbID {
		t.Fatalf("pod metrics of %v, want only %s's", pms, sbID)
	}
	if len(pms[0].GetContainerMetrics()) != 2 {
		t.Errorf("container metrics: %v", pms[0].GetContainerMetrics())
	}
}

// A sandbox that is not ready has nothing measured: no metrics, and its
// agent is not asked.
func TestPodSandboxMetricsNotReady(t *testing.T) {
	f := newFake(t)
	sbID, app, sidecar := f.twoCtrPod(t, "web")
	asked := 0
	f.shims.SetStats(func(dir string) (*agentapi.StatsResponse, error) {
		asked++
		return guestStats(time.Now().UnixNano(), app, sidecar), nil
	})
	if _, err := f.StopPodSandbox(context.Background(), &runtimeapi.StopPodSandboxRequest{PodSandboxId: sbID}); err != nil {
		t.Fatalf("StopPodSandbox: %v", err)
	}
	if pms := f.podMetrics(t); len(pms) != 0 {
		t.Errorf("metrics of a stopped sandbox: %v", pms)
	}
	if asked != 0 {
		t.Errorf("the stopped sandbox's agent was asked for stats %d times", asked)
	}
}

// metricsStream is a StreamPodSandboxMetrics server stream that keeps
// what is sent.
type metricsStream struct {
	grpc.ServerStream
	ctx context.Context
	got []*runtimeapi.PodSandboxMetrics
}

func (s *metricsStream) Context() context.Context { return s.ctx }

func (s *metricsStream) Send(r *runtimeapi.StreamPodSandboxMetricsResponse) error {
	if len(r.GetPodSandboxMetrics()) == 0 {
		return status.Error(codes.Internal, "an empty page")
	}
	s.got = append(s.got, r.GetPodSandboxMetrics()...)
	return nil
}

// A guest names its NICs and disks: names that are not device names,
// repeats and more than maxGuestDevices never become label values.
func TestGuestDevices(t *testing.T) {
	var nics []*agentapi.NetworkStats
	for _, n := range []string{"eth0", "eth0", "", "bad name", "x\"}", strings.Repeat("a", 33), "eth1"} {
		nics = append(nics, &agentapi.NetworkStats{Name: n})
	}
	for i := range 40 {
		nics = append(nics, &agentapi.NetworkStats{Name: fmt.Sprintf("veth%d", i)})
	}
	got := guestDevices(nics, (*agentapi.NetworkStats).GetName)
	if len(got) != maxGuestDevices || got[0].GetName() != "eth0" || got[1].GetName() != "eth1" || got[2].GetName() != "veth0" {
		var names []string
		for _, n := range got {
			names = append(names, n.GetName())
		}
		t.Errorf("kept %v", names)
	}
}

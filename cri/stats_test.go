package cri

import (
	"context"
	"testing"
	"time"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/macvz/macvz/runtime/agentapi"
)

// The CPU rate of an ID needs a base sample at least minRateWindow
// older; a closer sample keeps the last rate; a cumulative time that
// goes back starts again; an idle ID is forgotten.
func TestCPURates(t *testing.T) {
	now := time.Unix(1000, 0)
	r := newCPURates()
	r.now = func() time.Time { return now }
	sec := int64(time.Second)
	ts := now.UnixNano()
	steps := []struct {
		ts    int64
		usage uint64
		rate  uint64
		ok    bool
	}{
		{ts, 5e9, 0, false},                // first sample
		{ts + sec/2, 5.1e9, 0, false},      // too close to the base, no rate yet
		{ts + 2*sec, 6e9, 0.5e9, true},     // 1 s of CPU over 2 s
		{ts + 2*sec + 1, 9e9, 0.5e9, true}, // too close: the last rate
		{ts + 4*sec, 10e9, 2e9, true},      // 4 s over 2 s: two cores
		{ts + 5*sec, 1e9, 0, false},        // went back (a process exited)
		{ts + 7*sec, 1.5e9, 0.25e9, true},
	}
	for i, s := range steps {
		rate, ok := r.observe("a", s.ts, s.usage)
		if rate != s.rate || ok != s.ok {
			t.Errorf("step %d: observe(%d, %d) = %d, %v; want %d, %v", i, s.ts-ts, s.usage, rate, ok, s.rate, s.ok)
		}
	}
	if _, ok := r.observe("b", ts, 1); ok {
		t.Error("a new ID has a rate")
	}
	now = now.Add(rateIdle + 2*time.Minute)
	r.observe("c", ts, 1)
	if _, ok := r.m["a"]; ok {
		t.Error("an idle ID was kept")
	}
	if len(r.m) != 1 {
		t.Errorf("%d IDs kept, want c alone", len(r.m))
	}
}

// What kubelet reads with PodAndContainerStatsFromCRI
// (cri_stats_provider.go): the pod's CPU time and rate, memory and
// processes; each running container's CPU time and rate, memory and
// writable layer, whose FsId is the image filesystem's mountpoint, the
// one ImageFsInfo names.
func TestPodSandboxStatsForKubelet(t *testing.T) {
	f := newFake(t)
	sbID, app, sidecar := f.twoCtrPod(t, "web")
	base := time.Now().Add(-10 * time.Second)
	var answer *agentapi.StatsResponse
	f.shims.SetStats(func(string) (*agentapi.StatsResponse, error) { return answer, nil })
	stats := func() *runtimeapi.PodSandboxStats {
		t.Helper()
		r, err := f.PodSandboxStats(context.Background(), &runtimeapi.PodSandboxStatsRequest{PodSandboxId: sbID})
		if err != nil {
			t.Fatalf("PodSandboxStats: %v", err)
		}
		return r.GetStats()
	}

	answer = guestStats(base.UnixNano(), app, sidecar)
	first := stats()
	if first.GetLinux().GetCpu().GetUsageNanoCores() != nil {
		t.Errorf("a rate from one sample: %v", first.GetLinux().GetCpu())
	}

	// 2 s later the VM used 1 s more CPU, app 0.5 s.
	answer = guestStats(base.Add(2*time.Second).UnixNano(), app, sidecar)
	answer.Cpu.UsageCoreNanoseconds += 1e9
	answer.Containers[0].CpuUsageCoreNanoseconds += 0.5e9
	st := stats()
	lx := st.GetLinux()
	if got := lx.GetCpu().GetUsageCoreNanoSeconds().GetValue(); got != 8_900_000_000 {
		t.Errorf("pod CPU time %d", got)
	}
	if got := lx.GetCpu().GetUsageNanoCores(); got == nil || got.GetValue() != 0.5e9 {
		t.Errorf("pod CPU rate %v, want 0.5 cores", got)
	}
	if got := lx.GetMemory().GetWorkingSetBytes().GetValue(); got != 200<<20 {
		t.Errorf("pod working set %d", got)
	}
	if got := lx.GetProcess().GetProcessCount().GetValue(); got != 4 {
		t.Errorf("pod processes %d", got)
	}
	if lx.GetNetwork() != nil {
		t.Errorf("network of a host-network pod's user NIC: %v", lx.GetNetwork())
	}
	if len(lx.GetContainers()) != 2 {
		t.Fatalf("%d containers", len(lx.GetContainers()))
	}
	for _, c := range lx.GetContainers() {
		wl := c.GetWritableLayer()
		if mp := wl.GetFsId().GetMountpoint(); mp != f.cfg.Root {
			t.Errorf("container %s: writable layer on %q, want the image filesystem %q", c.GetAttributes().GetId(), mp, f.cfg.Root)
		}
		if wl.GetUsedBytes().GetValue() != 2<<30 || wl.GetInodesUsed().GetValue() != 400 {
			t.Errorf("container %s: writable layer %v", c.GetAttributes().GetId(), wl)
		}
		if c.GetMemory().GetWorkingSetBytes() == nil {
			t.Errorf("container %s: no working set", c.GetAttributes().GetId())
		}
		if c.GetAttributes().GetId() == app {
			if got := c.GetCpu().GetUsageNanoCores(); got == nil || got.GetValue() != 0.25e9 {
				t.Errorf("app's CPU rate %v, want 0.25 cores", got)
			}
		}
	}

	// ListContainerStats, a moment later, keeps the rates.
	cs, err := f.ListContainerStats(context.Background(), &runtimeapi.ListContainerStatsRequest{Filter: &runtimeapi.ContainerStatsFilter{Id: app}})
	if err != nil || len(cs.GetStats()) != 1 {
		t.Fatalf("ListContainerStats: %v, %v", cs, err)
	}
	if got := cs.GetStats()[0].GetCpu().GetUsageNanoCores(); got == nil || got.GetValue() != 0.25e9 {
		t.Errorf("ListContainerStats: app's CPU rate %v, want 0.25 cores", got)
	}

	fs, err := f.ImageFsInfo(context.Background(), &runtimeapi.ImageFsInfoRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if got := fs.GetImageFilesystems()[0].GetFsId().GetMountpoint(); got != f.cfg.Root {
		t.Errorf("ImageFsInfo mountpoint %q, want %q", got, f.cfg.Root)
	}
}

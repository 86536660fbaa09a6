package integration

import (
	"context"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// BenchmarkListPodSandbox measures ListPodSandbox (and ListContainers)
// over the CRI socket with 100 and then 1000 sandboxes recorded, each
// with a container (created: a pod's VM boots with its first started
// container, so no VM runs and the measure is the daemon's own), as
// kubelet's PLEG calls it every second. Reports p50 and p99 of 1000 calls
// at each size, and Version's p99 as the floor a call cannot go under.
func BenchmarkListPodSandbox(b *testing.B) {
	v := newVMTestIn(b, nil, "[vm]\nwarm_start = false\n")
	rt := v.d.runtimeClient(b)
	ctx := context.Background()
	made := 0
	grow := func(to int) {
		var wg sync.WaitGroup
		sem := make(chan struct{}, 8)
		errs := make(chan error, to)
		for i := made; i < to; i++ {
			wg.Add(1)
			sem <- struct{}{}
			go func() {
				defer wg.Done()
				defer func() { <-sem }()
				name := "list" + strconv.Itoa(i)
				cfg := &runtimeapi.PodSandboxConfig{
					Metadata:     &runtimeapi.PodSandboxMetadata{Name: name, Namespace: "bench", Uid: name + "-uid"},
					LogDirectory: filepath.Join(v.d.dir, "logs", name),
					Labels:       map[string]string{"app": "list", "n": strconv.Itoa(i)},
					Linux: &runtimeapi.LinuxPodSandboxConfig{SecurityContext: &runtimeapi.LinuxSandboxSecurityContext{
						NamespaceOptions: &runtimeapi.NamespaceOption{Network: runtimeapi.NamespaceMode_NODE}}},
				}
				sb, err := rt.RunPodSandbox(ctx, &runtimeapi.RunPodSandboxRequest{Config: cfg})
				if err != nil {
					errs <- err
					return
				}
				_, err = rt.CreateContainer(ctx, &runtimeapi.CreateContainerRequest{
					PodSandboxId: sb.GetPodSandboxId(), SandboxConfig: cfg,
					Config: &runtimeapi.ContainerConfig{
						Metadata: &runtimeapi.ContainerMetadata{Name: "main"},
						Image:    &runtimeapi.ImageSpec{Image: v.plain},
						Command:  []string{"sleep", "3600"},
						LogPath:  "main.log",
					},
				})
				if err != nil {
					errs <- err
				}
			}()
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			b.Fatal(err)
		}
		made = to
	}
	measure := func(size int) {
		const calls = 1000
		pods := make([]time.Duration, 0, calls)
		ctrs := make([]time.Duration, 0, calls)
		for range calls {
			t0 := time.Now()
			r, err := rt.ListPodSandbox(ctx, &runtimeapi.ListPodSandboxRequest{})
			pods = append(pods, time.Since(t0))
			if err != nil || len(r.GetItems()) != size {
				b.Fatalf("ListPodSandbox: %d items, %v; want %d", len(r.GetItems()), err, size)
			}
			t0 = time.Now()
			c, err := rt.ListContainers(ctx, &runtimeapi.ListContainersRequest{})
			ctrs = append(ctrs, time.Since(t0))
			if err != nil || len(c.GetContainers()) != size {
				b.Fatalf("ListContainers: %d items, %v; want %d", len(c.GetContainers()), err, size)
			}
		}
		// The same run's floor: Version does no work in the daemon, so its
		// latency is the socket, gRPC's framing and the two schedulers.
		vers := make([]time.Duration, 0, calls)
		for range calls {
			t0 := time.Now()
			if _, err := rt.Version(ctx, &runtimeapi.VersionRequest{}); err != nil {
				b.Fatal(err)
			}
			vers = append(vers, time.Since(t0))
		}
		n := strconv.Itoa(size)
		b.ReportMetric(ms(pct(pods, 50)), "pods-p50-ms-at-"+n)
		b.ReportMetric(ms(pct(pods, 99)), "pods-p99-ms-at-"+n)
		b.ReportMetric(ms(pct(ctrs, 99)), "ctrs-p99-ms-at-"+n)
		b.ReportMetric(ms(pct(vers, 99)), "version-p99-ms-at-"+n)
	}
	b.ResetTimer()
	for range b.N {
		grow(100)
		measure(100)
		grow(1000)
		measure(1000)
	}
	b.StopTimer()
	rss, _ := rssOf(b, v.d.cmd.Process.Pid)
	b.ReportMetric(float64(rss)/(1<<20), "daemon-MiB-at-1000")
}

// pct is the p-th percentile (nearest rank) of ds.
func pct(ds []time.Duration, p int) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[min(len(s)-1, (len(s)*p+99)/100-1)]
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

//go:build linux

package integration

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// statsPodName is the static pod's name: its manifest's name and the
// node's (--hostname-override).
const statsPodName = "web-macvz-node-stats"

// statsStaticPod is a static pod of the httpd guest on the host's
// network: this test's daemon has no CNI configuration (TestNodeVM's
// nodeVMStaticPod is on the pod network), and the stats do not depend on
// the pod's network.
const statsStaticPod = `apiVersion: v1
kind: Pod
metadata:
  name: web
  namespace: default
spec:
  hostNetwork: true
  terminationGracePeriodSeconds: 5
  containers:
  - name: httpd
    image: %s
`

// summary is the part of kubelet's /stats/summary (stats/v1alpha1) the
// test reads.
type summary struct {
	Node struct {
		Runtime struct {
			ImageFs *fsStats `json:"imageFs"`
		} `json:"runtime"`
	} `json:"node"`
	Pods []struct {
		PodRef struct {
			Name, Namespace string
		} `json:"podRef"`
		CPU *struct {
			UsageNanoCores       *uint64 `json:"usageNanoCores"`
			UsageCoreNanoSeconds *uint64 `json:"usageCoreNanoSeconds"`
		} `json:"cpu"`
		Memory *struct {
			WorkingSetBytes *uint64 `json:"workingSetBytes"`
		} `json:"memory"`
		Containers []struct {
			Name string `json:"name"`
			CPU  *struct {
				UsageCoreNanoSeconds *uint64 `json:"usageCoreNanoSeconds"`
			} `json:"cpu"`
			Rootfs *fsStats `json:"rootfs"`
		} `json:"containers"`
	} `json:"pods"`
}

type fsStats struct {
	CapacityBytes  *uint64 `json:"capacityBytes"`
	AvailableBytes *uint64 `json:"availableBytes"`
	UsedBytes      *uint64 `json:"usedBytes"`
}

// TestNodeVMStats: kubelet in the node VM, with the node VM sized to the
// host (cpus and memory_bytes 0), reports the host's CPUs and memory as
// the machine's (cAdvisor's machine_cpu_cores and machine_memory_bytes,
// which are the node's capacity), takes its static pod's stats from the
// CRI (PodAndContainerStatsFromCRI, which the daemon turns on): nonzero
// CPU time and rate and working set in /stats/summary, the pod's series
// in /metrics/cadvisor; and sees the host's image filesystem (capacity
// and free space as the host's statfs of the daemon's root), with no
// imageFs or eviction-manager error in its log.
func TestNodeVMStats(t *testing.T) {
	requireKubelet(t)
	// cpus and memory_bytes left 0: the node VM sized to the host.
	n := startNodeVMTest(t, standaloneNodeVM{
		hostname:   "macvz-node-stats",
		staticPods: []string{statsPodName},
		kubelet: map[string]any{
			"evictionHard": map[string]string{"memory.available": "50Mi", "imagefs.available": "1%"},
		},
	})
	v := n.v

	st := n.waitRunning(t)
	n.writeManifest(t, "web.yaml", fmt.Sprintf(statsStaticPod, v.httpd))
	podID := n.waitStaticPodRunning(t, "kubelet in the node VM running the static pod", statsPodName)
	t.Logf("static pod %s running (sandbox %.12s)", statsPodName, podID)
	kubeletRO := n.connectKubeletPort(t, st.SandboxID)

	// The pod's stats, from the CRI: its CPU rate needs two samples, so
	// it shows from the second summary on.
	var sum summary
	var raw, why string
	var err error
	ok := false
	deadline := time.Now().Add(3 * time.Minute)
	for !ok && time.Now().Before(deadline) {
		time.Sleep(5 * time.Second)
		if raw, err = kubeletRO.get("/stats/summary"); err != nil {
			why = err.Error()
			continue
		}
		sum = summary{}
		if err := json.Unmarshal([]byte(raw), &sum); err != nil {
			t.Fatalf("/stats/summary: %v\n%s", err, raw)
		}
		why = "no pod " + statsPodName
		for _, p := range sum.Pods {
			if p.PodRef.Name != statsPodName {
				continue
			}
			switch {
			case p.CPU == nil || p.CPU.UsageCoreNanoSeconds == nil || *p.CPU.UsageCoreNanoSeconds == 0:
				why = "the pod has no CPU time"
			case p.CPU.UsageNanoCores == nil || *p.CPU.UsageNanoCores == 0:
				why = "the pod has no CPU rate (usageNanoCores)"
			case p.Memory == nil || p.Memory.WorkingSetBytes == nil || *p.Memory.WorkingSetBytes == 0:
				why = "the pod has no working set"
			case len(p.Containers) != 1 || p.Containers[0].CPU == nil || p.Containers[0].CPU.UsageCoreNanoSeconds == nil || *p.Containers[0].CPU.UsageCoreNanoSeconds == 0:
				why = "the pod's container has no CPU time"
			default:
				ok = true
				t.Logf("/stats/summary: %s: CPU %d ns, %d nanocores; working set %d bytes", statsPodName, *p.CPU.UsageCoreNanoSeconds, *p.CPU.UsageNanoCores, *p.Memory.WorkingSetBytes)
				if fs := p.Containers[0].Rootfs; fs == nil || fs.CapacityBytes == nil || *fs.CapacityBytes == 0 {
					t.Errorf("the container's rootfs has no capacity (the image filesystem's): %+v", fs)
				}
			}
		}
	}
	if !ok {
		t.Fatalf("/stats/summary: %s (%s)\n%s", why, time.Since(deadline.Add(-3*time.Minute)).Round(time.Second), raw)
	}

	// The image filesystem: the host's, where the daemon keeps images
	// and disks (its root).
	var host syscall.Statfs_t
	if err := syscall.Statfs(v.d.root(), &host); err != nil {
		t.Fatal(err)
	}
	hostCap, hostAvail := host.Blocks*uint64(host.Frsize), host.Bavail*uint64(host.Frsize)
	switch ifs := sum.Node.Runtime.ImageFs; {
	case ifs == nil || ifs.CapacityBytes == nil || ifs.AvailableBytes == nil || ifs.UsedBytes == nil:
		t.Errorf("/stats/summary: the image filesystem lacks capacity, free or used bytes: %+v", ifs)
	case absDiff(*ifs.CapacityBytes, hostCap) > 1<<20:
		// 9p's statfs gives whole blocks of its message size: a few
		// hundred KiB less at most.
		t.Errorf("image filesystem capacity %d, want the host's %d", *ifs.CapacityBytes, hostCap)
	case absDiff(*ifs.AvailableBytes, hostAvail) > max(hostCap/50, 1<<30):
		t.Errorf("image filesystem available %d, the host's %d", *ifs.AvailableBytes, hostAvail)
	default:
		t.Logf("image filesystem: capacity %d, available %d, used %d (the host's: %d, %d)", *ifs.CapacityBytes, *ifs.AvailableBytes, *ifs.UsedBytes, hostCap, hostAvail)
	}

	// The machine (the node's capacity) and the pod's series.
	metrics, err := kubeletRO.get("/metrics/cadvisor")
	if err != nil {
		t.Fatal(err)
	}
	cores, okCores := promValue(metrics, "machine_cpu_cores", "")
	if !okCores || int(cores) != runtime.NumCPU() {
		t.Errorf("machine_cpu_cores %v (found %v), want the host's %d", cores, okCores, runtime.NumCPU())
	}
	memTotal := hostMemTotal(t)
	mem, okMem := promValue(metrics, "machine_memory_bytes", "")
	// The VM's MemTotal is its RAM less what its kernel keeps.
	if !okMem || mem > float64(memTotal)*1.02 || mem < float64(memTotal)*0.9 {
		t.Errorf("machine_memory_bytes %v (found %v), want about the host's MemTotal %d", mem, okMem, memTotal)
	}
	t.Logf("machine: %v CPUs, %v bytes of memory (host: %d, %d)", cores, mem, runtime.NumCPU(), memTotal)
	for _, m := range []string{"container_cpu_usage_seconds_total", "container_memory_working_set_bytes"} {
		if v, ok := promValue(metrics, m, `pod="`+statsPodName+`"`); !ok || (m == "container_memory_working_set_bytes" && v == 0) {
			t.Errorf("/metrics/cadvisor: no %s for pod %s (%v)", m, statsPodName, v)
		}
	}

	// kubelet's log: the image filesystem and the stats were found. The
	// eviction manager ran by now (every 10 s), the image GC at the
	// start.
	log, _ := os.ReadFile(st.LogPath)
	for _, l := range strings.Split(string(log), "\n") {
		if !slices.ContainsFunc(kubeletFsErrors, func(bad string) bool { return strings.Contains(l, bad) }) {
			continue
		}
		if !slices.ContainsFunc(kubeletBenignFsLines, func(ok string) bool { return strings.Contains(l, ok) }) {
			t.Errorf("kubelet's log: %s", l)
		}
	}

	// The manifest goes: kubelet removes the pod; the node VM is stopped.
	os.Remove(filepath.Join(n.kube, "manifests", "web.yaml"))
	waitFor(t, "the static pod removed", 3*time.Minute, func() bool {
		out, _ := v.d.crictl("pods", "--name", "^"+statsPodName+"$", "--state", "ready", "-q")
		return strings.TrimSpace(out) == ""
	})
	n.stop(t)
}

// kubeletFsErrors are what kubelet logs when it cannot size the image
// filesystem or a container's rootfs (cri_stats_provider.go, the image
// GC, the eviction manager), or the node VM could not mount it.
var kubeletFsErrors = []string{"imageFs", "ImageFs", "InvalidDiskCapacity", "invalid capacity", "eviction manager: failed",
	"Eviction manager: failed", "Failed to get the info of the filesystem", "failed to get rootFs", "cannot find filesystem info",
	"the image filesystem is not mounted"}

// kubeletBenignFsLines are such lines that every kubelet logs, whatever
// its runtime:
//   - the first image GC runs as kubelet starts, before cAdvisor's first
//     housekeeping has stats of any file system: kubelet says "failed
//     once. Stats initialization may not have completed yet", and the
//     stats provider "unable to find data in memory cache" (cAdvisor's
//     ErrDataNotFound, which it logs at V(2) and tolerates);
//   - the eviction manager asks cAdvisor for a split container file
//     system by a label only CRI-O's socket has ("no imagefs label for
//     configured runtime"), and ignores the answer.
var kubeletBenignFsLines = []string{"Stats initialization may not have completed yet", "unable to find data in memory cache",
	"no imagefs label for configured runtime"}

// hostMemTotal is /proc/meminfo's MemTotal in bytes.
func hostMemTotal(t *testing.T) uint64 {
	b, err := os.ReadFile("/proc/meminfo")
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) >= 2 && f[0] == "MemTotal:" {
			kb, err := strconv.ParseUint(f[1], 10, 64)
			if err != nil {
				t.Fatal(err)
			}
			return kb << 10
		}
	}
	t.Fatal("no MemTotal in /proc/meminfo")
	return 0
}

func absDiff(a, b uint64) uint64 {
	if a > b {
		return a - b
	}
	return b - a
}

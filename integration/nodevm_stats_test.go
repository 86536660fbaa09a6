//go:build linux

package integration

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/macvz/macvz/integration/guest"
	"github.com/macvz/macvz/integration/testregistry"
	"github.com/macvz/macvz/runtime/agentapi"
	"github.com/macvz/macvz/runtime/nodevm"
	"github.com/macvz/macvz/runtime/shim"
)

// statsPodName is the static pod's name: its manifest's name and the
// node's (--hostname-override).
const statsPodName = "web-macvz-node-stats"

// kubeletReadOnlyPort is kubelet's read-only HTTP port in the node VM:
// no credentials, so the test reads /stats/summary and /metrics/cadvisor
// with a plain GET through the node VM's agent.
const kubeletReadOnlyPort = 10255

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
	img, err := nodeImage()
	if err != nil {
		t.Fatalf("building the node image: %v", err)
	}
	nodeReg := testregistry.Start(t, testregistry.Options{})
	if err := nodeReg.Push(context.Background(), "macvz/node", guest.RefNode, img); err != nil {
		t.Fatal(err)
	}
	nodeRef := nodeReg.Host() + "/macvz/node:" + guest.RefNode

	kube, err := os.MkdirTemp("", "mvzkube")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(kube) })
	if err := os.MkdirAll(filepath.Join(kube, "manifests"), 0o755); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{"/var/lib/kubelet/pods", "/var/log/pods", "/var/log/containers"} {
		if _, err := os.Stat(p); os.IsNotExist(err) {
			if err := os.MkdirAll(p, 0o755); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { os.Remove(p) })
		}
	}
	// The static pod's directories on the host (see TestNodeVM).
	t.Cleanup(func() {
		dirs, _ := filepath.Glob("/var/log/pods/default_" + statsPodName + "_*")
		for _, d := range dirs {
			if uid := d[strings.LastIndex(d, "_")+1:]; uid != "" {
				os.RemoveAll(filepath.Join("/var/lib/kubelet/pods", uid))
			}
			os.RemoveAll(d)
		}
		links, _ := filepath.Glob("/var/log/containers/" + statsPodName + "_*")
		for _, l := range links {
			os.Remove(l)
		}
	})
	cfg, err := json.Marshal(map[string]any{
		"kind":                   "KubeletConfiguration",
		"apiVersion":             "kubelet.config.k8s.io/v1beta1",
		"cgroupDriver":           "cgroupfs",
		"cgroupsPerQOS":          false,
		"enforceNodeAllocatable": []string{},
		"failSwapOn":             false,
		"failCgroupV1":           false,
		"staticPodPath":          filepath.Join(kube, "manifests"),
		"address":                "127.0.0.1",
		"readOnlyPort":           kubeletReadOnlyPort,
		"authentication":         map[string]any{"anonymous": map[string]any{"enabled": true}, "webhook": map[string]any{"enabled": false}},
		"authorization":          map[string]any{"mode": "AlwaysAllow"},
		"evictionHard":           map[string]string{"memory.available": "50Mi", "imagefs.available": "1%"},
		"runtimeRequestTimeout":  "4m",
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(kube, "kubelet.json"), cfg, 0o644); err != nil {
		t.Fatal(err)
	}
	q := func(ss ...string) string {
		var out []string
		for _, s := range ss {
			out = append(out, fmt.Sprintf("%q", s))
		}
		return strings.Join(out, ", ")
	}
	// cpus and memory_bytes 0: the host's. No forwarded ports: the test
	// reaches kubelet through the agent.
	v := newVMTestIn(t, nil, fmt.Sprintf(`
[registry.hosts.%q]
insecure = true

[vm]
warm_start = false

[node]
enabled = true
image = %q
kubelet_args = [%s]
shares = [%s]
ports = []
cpus = 0
memory_bytes = 0
`, nodeReg.Host(), nodeRef,
		q("--config="+filepath.Join(kube, "kubelet.json"), "--hostname-override=macvz-node-stats", "--v=2"),
		q(kube, "/var/lib/kubelet/pods", "/var/log/pods", "/var/log/containers")))
	nodeCLI := func(args ...string) (string, error) {
		out, err := exec.Command(macvzBin, append(append([]string{"node"}, args...), "--config", v.d.configPath())...).CombinedOutput()
		return string(out), err
	}
	status := func() nodevm.Status {
		var st nodevm.Status
		if out, err := nodeCLI("status", "--json"); err == nil {
			json.Unmarshal([]byte(out), &st)
		}
		return st
	}
	kubeletLog := func() string {
		b, _ := os.ReadFile(status().LogPath)
		return string(b)
	}
	stopped := false
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("kubelet's log:\n%s", kubeletLog())
		}
		if !stopped {
			nodeCLI("stop")
			waitFor(t, "the node VM stopped", time.Minute, func() bool { return status().State == "stopped" })
		}
	})

	waitFor(t, "the node VM running (macvz node status)", 4*time.Minute, func() bool { return status().State == "running" })
	st := status()
	logPath := st.LogPath
	if err := os.WriteFile(filepath.Join(kube, "manifests", "web.yaml"), []byte(fmt.Sprintf(nodeVMStaticPod, v.httpd)), 0o644); err != nil {
		t.Fatal(err)
	}
	var podID string
	waitFor(t, "kubelet in the node VM running the static pod", 5*time.Minute, func() bool {
		out, _ := v.d.crictl("pods", "--name", "^"+statsPodName+"$", "--state", "ready", "-q")
		podID = strings.TrimSpace(out)
		if podID == "" {
			return false
		}
		ctr, _ := v.d.crictl("ps", "--pod", podID, "--state", "running", "-q")
		return strings.TrimSpace(ctr) != ""
	})
	t.Logf("static pod %s running (sandbox %.12s)", statsPodName, podID)

	// kubelet's read-only port, reached through the node VM's agent.
	ctx := context.Background()
	shimc, err := shim.Connect(ctx, filepath.Join(v.d.state, "sandboxes", st.SandboxID))
	if err != nil {
		t.Fatalf("the node VM's shim: %v", err)
	}
	defer shimc.Close()
	get := func(path string) (string, error) {
		ctx, cancel := context.WithTimeout(ctx, time.Minute)
		defer cancel()
		conn, err := agentapi.DialPort(ctx, shimc.Agent(), kubeletReadOnlyPort)
		if err != nil {
			return "", err
		}
		defer conn.Close()
		req, err := http.NewRequest(http.MethodGet, "http://127.0.0.1:"+strconv.Itoa(kubeletReadOnlyPort)+path, nil)
		if err != nil {
			return "", err
		}
		req.Close = true
		if err := req.Write(conn); err != nil {
			return "", err
		}
		resp, err := http.ReadResponse(bufio.NewReader(conn), req)
		if err != nil {
			return "", err
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		if err != nil {
			return "", err
		}
		if resp.StatusCode != http.StatusOK {
			return "", fmt.Errorf("GET %s: %s: %s", path, resp.Status, b)
		}
		return string(b), nil
	}

	// The pod's stats, from the CRI: its CPU rate needs two samples, so
	// it shows from the second summary on.
	var sum summary
	var raw, why string
	ok := false
	deadline := time.Now().Add(3 * time.Minute)
	for !ok && time.Now().Before(deadline) {
		time.Sleep(5 * time.Second)
		if raw, err = get("/stats/summary"); err != nil {
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
	metrics, err := get("/metrics/cadvisor")
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
	log, _ := os.ReadFile(logPath)
	for _, l := range strings.Split(string(log), "\n") {
		if !slices.ContainsFunc(kubeletFsErrors, func(bad string) bool { return strings.Contains(l, bad) }) {
			continue
		}
		if !slices.ContainsFunc(kubeletBenignFsLines, func(ok string) bool { return strings.Contains(l, ok) }) {
			t.Errorf("kubelet's log: %s", l)
		}
	}

	// The manifest goes: kubelet removes the pod; the node VM is stopped.
	os.Remove(filepath.Join(kube, "manifests", "web.yaml"))
	waitFor(t, "the static pod removed", 3*time.Minute, func() bool {
		out, _ := v.d.crictl("pods", "--name", "^"+statsPodName+"$", "--state", "ready", "-q")
		return strings.TrimSpace(out) == ""
	})
	if out, err := nodeCLI("stop"); err != nil {
		t.Fatalf("macvz node stop: %v\n%s", err, out)
	}
	waitFor(t, "the node VM stopped", time.Minute, func() bool { return status().State == "stopped" })
	stopped = true
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

// promValue is the first sample of metric in a Prometheus text page
// whose labels contain label ("" = any).
func promValue(page, metric, label string) (float64, bool) {
	for _, l := range strings.Split(page, "\n") {
		if !strings.HasPrefix(l, metric+"{") && !strings.HasPrefix(l, metric+" ") {
			continue
		}
		if label != "" && !strings.Contains(l, label) {
			continue
		}
		f := strings.Fields(l[strings.LastIndex(l, "}")+1:])
		if len(f) == 0 {
			continue
		}
		if v, err := strconv.ParseFloat(f[0], 64); err == nil {
			return v, true
		}
	}
	return 0, false
}

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

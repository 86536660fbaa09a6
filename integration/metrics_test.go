package integration

import (
	"encoding/json"
	"io"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestMetrics: a daemon with [metrics] on a free loopback port says where
// in crictl info, and after one pod's life (runp, create, start, exec,
// stop, rm) its /metrics has counted the CRI calls with their codes, the
// pulls, the VM's boot and its agent calls, shows the VM running while it
// runs, and names no pod, container or image.
func TestMetrics(t *testing.T) {
	v := newVMTestIn(t, nil, "\n[metrics]\naddress = \"127.0.0.1:0\"\n")
	var info map[string]json.RawMessage
	if err := json.Unmarshal([]byte(v.d.mustCrictl("info")), &info); err != nil {
		t.Fatal(err)
	}
	var url string
	if err := json.Unmarshal(info["metrics"], &url); err != nil || !strings.HasPrefix(url, "http://127.0.0.1:") || strings.HasSuffix(url, ":0/metrics") {
		t.Fatalf("crictl info's metrics: %s (%v)", info["metrics"], err)
	}

	podCfg := v.podConfig(t, "metrics", map[string]any{"hostname": "metrics-host"})
	pod := v.runPod(t, podCfg)
	ctr := v.startCtr(t, pod, v.ctrConfig(t, "c1", v.plain, map[string]any{
		"command": []string{"/bin/sh", "-c", "trap 'exit 0' TERM; while :; do sleep 1; done"},
	}), podCfg)
	if out := v.execOut(t, ctr, "hostname"); strings.TrimSpace(out) != "metrics-host" {
		t.Errorf("exec hostname: %q", out)
	}
	running := scrapeMetrics(t, url)
	if n := running.sum("macvz_vms_running", `backend="qemu"`, `os="linux"`, `role="pod"`); n != 1 {
		t.Errorf("macvz_vms_running with the pod up = %v, want 1", n)
	}
	v.d.mustCrictl("stop", ctr)
	v.d.mustCrictl("rm", ctr)
	v.d.mustCrictl("stopp", pod)
	v.d.mustCrictl("rmp", pod)

	m := scrapeMetrics(t, url)
	for _, verb := range []string{"RunPodSandbox", "CreateContainer", "StartContainer", "ExecSync", "StopContainer", "RemoveContainer", "StopPodSandbox", "RemovePodSandbox", "PullImage", "Status"} {
		if n := m.sum("macvz_cri_request_duration_seconds_count", `method="`+verb+`"`, `code="OK"`); n < 1 {
			t.Errorf("%s calls with code OK: %v, want at least 1", verb, n)
		}
	}
	if n := m.sum("macvz_vm_boot_duration_seconds_count", `os="linux"`, `result="ok"`); n < 1 {
		t.Errorf("VM boots that succeeded: %v, want at least 1", n)
	}
	// The harness pulled two images before the test began.
	if n := m.sum("macvz_image_pull_duration_seconds_count", `result="ok"`); n < 2 {
		t.Errorf("pulls that succeeded: %v, want at least 2", n)
	}
	if n := m.sum("macvz_image_pull_bytes_total", `result="ok"`); n <= 0 {
		t.Errorf("bytes pulled: %v", n)
	}
	if n := m.sum("macvz_agent_call_duration_seconds_count", `result="ok"`); n < 1 {
		t.Errorf("agent calls: %v, want some", n)
	}
	if n := m.sum("macvz_vms_running", `os="linux"`, `role="pod"`); n != 0 {
		t.Errorf("macvz_vms_running after the pod was removed = %v, want 0", n)
	}
	for _, std := range []string{"go_goroutines", "process_resident_memory_bytes", "macvz_build_info"} {
		if _, ok := m.samples[std]; !ok {
			t.Errorf("/metrics lacks %s", std)
		}
	}
	// Labels come from fixed sets: no ID, name or image reference.
	for _, secret := range []string{pod, ctr, "metrics-host", v.pullHost, "macvz/guest"} {
		if strings.Contains(m.text, secret) {
			t.Errorf("/metrics mentions %q", secret)
		}
	}
}

// scraped is one /metrics answer in the text format: its samples by
// metric name (each the line's labels and value), and the whole text.
type scraped struct {
	text    string
	samples map[string][]scrapedSample
}

type scrapedSample struct {
	labels string
	value  float64
}

func scrapeMetrics(t *testing.T, url string) scraped {
	t.Helper()
	c := &http.Client{Timeout: 30 * time.Second}
	resp, err := c.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %s %v", url, resp.Status, err)
	}
	s := scraped{text: string(b), samples: map[string][]scrapedSample{}}
	for _, line := range strings.Split(s.text, "\n") {
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if i < 0 {
			t.Fatalf("/metrics line %q", line)
		}
		series, val := line[:i], line[i+1:]
		f, err := strconv.ParseFloat(val, 64)
		if err != nil {
			t.Fatalf("/metrics line %q: %v", line, err)
		}
		name, labels, _ := strings.Cut(series, "{")
		s.samples[name] = append(s.samples[name], scrapedSample{labels: labels, value: f})
	}
	return s
}

// sum adds the samples of name whose labels contain each of want
// (`key="value"`).
func (s scraped) sum(name string, want ...string) float64 {
	var n float64
samples:
	for _, sm := range s.samples[name] {
		for _, w := range want {
			if !strings.Contains(sm.labels, w) {
				continue samples
			}
		}
		n += sm.value
	}
	return n
}

package opmetrics

import (
	"context"
	"errors"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/macvz/macvz/runtime/sandbox"
)

// sample is the value of the series of name whose labels include want:
// a counter's or gauge's value, a histogram's count. ok is false when
// there is no such series.
func sample(t *testing.T, m *Metrics, name string, want map[string]string) (v float64, ok bool) {
	t.Helper()
	mfs, err := m.Gatherer().Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	series:
		for _, s := range mf.GetMetric() {
			labels := map[string]string{}
			for _, l := range s.GetLabel() {
				labels[l.GetName()] = l.GetValue()
			}
			for k, v := range want {
				if labels[k] != v {
					continue series
				}
			}
			switch mf.GetType() {
			case dto.MetricType_COUNTER:
				return s.GetCounter().GetValue(), true
			case dto.MetricType_GAUGE:
				return s.GetGauge().GetValue(), true
			case dto.MetricType_HISTOGRAM:
				return float64(s.GetHistogram().GetSampleCount()), true
			}
		}
	}
	return 0, false
}

func wantSample(t *testing.T, m *Metrics, name string, labels map[string]string, want float64) {
	t.Helper()
	got, ok := sample(t, m, name, labels)
	if !ok {
		t.Errorf("%s%v: no such series", name, labels)
	} else if got != want {
		t.Errorf("%s%v = %v, want %v", name, labels, got, want)
	}
}

// TestUnaryInterceptor: each call is counted under its short method name
// and the gRPC code its caller gets; an error that is no status is
// Unknown.
func TestUnaryInterceptor(t *testing.T) {
	m := New("qemu", "test")
	ic := m.UnaryServerInterceptor()
	call := func(method string, err error) {
		info := &grpc.UnaryServerInfo{FullMethod: "/runtime.v1.RuntimeService/" + method}
		_, got := ic(context.Background(), nil, info, func(context.Context, any) (any, error) { return "resp", err })
		if got != err {
			t.Errorf("%s: the interceptor changed the error %v into %v", method, err, got)
		}
	}
	call("RunPodSandbox", nil)
	call("RunPodSandbox", nil)
	call("RunPodSandbox", status.Error(codes.ResourceExhausted, "no slot"))
	call("ContainerStatus", status.Error(codes.NotFound, "no such container"))
	call("Version", errors.New("plain"))
	wantSample(t, m, "macvz_cri_request_duration_seconds", map[string]string{"method": "RunPodSandbox", "code": "OK"}, 2)
	wantSample(t, m, "macvz_cri_request_duration_seconds", map[string]string{"method": "RunPodSandbox", "code": "ResourceExhausted"}, 1)
	wantSample(t, m, "macvz_cri_request_duration_seconds", map[string]string{"method": "ContainerStatus", "code": "NotFound"}, 1)
	wantSample(t, m, "macvz_cri_request_duration_seconds", map[string]string{"method": "Version", "code": "Unknown"}, 1)
}

type fakeStream struct{ grpc.ServerStream }

func TestStreamInterceptor(t *testing.T) {
	m := New("qemu", "test")
	ic := m.StreamServerInterceptor()
	info := &grpc.StreamServerInfo{FullMethod: "/runtime.v1.RuntimeService/GetContainerEvents", IsServerStream: true}
	ic(nil, fakeStream{}, info, func(any, grpc.ServerStream) error { return status.Error(codes.Canceled, "gone") })
	wantSample(t, m, "macvz_cri_request_duration_seconds", map[string]string{"method": "GetContainerEvents", "code": "Canceled"}, 1)
}

// TestRecorder: what the sandbox controller, the image store and the
// shims report moves the series with their labels.
func TestRecorder(t *testing.T) {
	m := New("vz", "test")
	var rec sandbox.Recorder = m
	rec.BootDone("darwin", false, 3*time.Second, nil)
	rec.BootDone("darwin", true, time.Second, nil)
	rec.BootDone("linux", true, time.Second, errors.New("restore failed"))
	rec.BootDone("plan9", false, time.Second, nil)
	rec.SlotRefused("darwin", sandbox.SlotLimit)
	rec.SlotRefused("darwin", sandbox.SlotLimit)
	rec.SlotWaited("darwin", 2*time.Second)
	rec.WarmLookup(true)
	rec.WarmLookup(false)
	rec.WarmLookup(false)
	rec.WarmSaved(sandbox.WarmSaveUnsupported)
	rec.ShimReconnected(sandbox.ShimAtStart)
	rec.ShimLost()
	m.PullDone(1000, time.Second, nil)
	m.PullDone(500, time.Second, errors.New("registry down"))
	m.PullDone(0, time.Second, nil)
	m.AgentCall("Ping", time.Millisecond, nil)
	m.AgentCall("StartProcess", time.Millisecond, errors.New("no such file"))

	wantSample(t, m, "macvz_vm_boot_duration_seconds", map[string]string{"os": "darwin", "kind": "cold", "result": "ok"}, 1)
	wantSample(t, m, "macvz_vm_boot_duration_seconds", map[string]string{"os": "darwin", "kind": "warm", "result": "ok"}, 1)
	wantSample(t, m, "macvz_vm_boot_duration_seconds", map[string]string{"os": "linux", "kind": "warm", "result": "error"}, 1)
	wantSample(t, m, "macvz_vm_boot_duration_seconds", map[string]string{"os": "other", "kind": "cold"}, 1)
	wantSample(t, m, "macvz_vm_slot_refusals_total", map[string]string{"os": "darwin", "reason": "limit"}, 2)
	wantSample(t, m, "macvz_vm_slot_wait_seconds", map[string]string{"os": "darwin"}, 1)
	wantSample(t, m, "macvz_warm_state_lookups_total", map[string]string{"result": "hit"}, 1)
	wantSample(t, m, "macvz_warm_state_lookups_total", map[string]string{"result": "miss"}, 2)
	wantSample(t, m, "macvz_warm_state_saves_total", map[string]string{"result": "unsupported"}, 1)
	wantSample(t, m, "macvz_shim_reconnects_total", map[string]string{"reason": "daemon_start"}, 1)
	wantSample(t, m, "macvz_shim_lost_total", nil, 1)
	wantSample(t, m, "macvz_image_pull_duration_seconds", map[string]string{"result": "ok"}, 2)
	wantSample(t, m, "macvz_image_pull_duration_seconds", map[string]string{"result": "error"}, 1)
	wantSample(t, m, "macvz_image_pull_bytes_total", map[string]string{"result": "ok"}, 1000)
	wantSample(t, m, "macvz_image_pull_bytes_total", map[string]string{"result": "error"}, 500)
	wantSample(t, m, "macvz_agent_call_duration_seconds", map[string]string{"method": "Ping", "result": "ok"}, 1)
	wantSample(t, m, "macvz_agent_call_duration_seconds", map[string]string{"method": "StartProcess", "result": "error"}, 1)
	wantSample(t, m, "macvz_build_info", map[string]string{"backend": "vz", "version": "test"}, 1)
}

// TestRunningVMs: the gauge is read from the controller when scraped,
// both guest OSes' pod VMs always present.
func TestRunningVMs(t *testing.T) {
	m := New("vz", "test")
	if _, ok := sample(t, m, "macvz_vms_running", nil); ok {
		t.Error("running VMs reported before anything counts them")
	}
	vms := []sandbox.VMCount{{OS: "darwin", Count: 2}}
	m.WatchVMs(func() ([]sandbox.VMCount, error) { return vms, nil })
	wantSample(t, m, "macvz_vms_running", map[string]string{"backend": "vz", "os": "darwin", "role": "pod"}, 2)
	wantSample(t, m, "macvz_vms_running", map[string]string{"backend": "vz", "os": "linux", "role": "pod"}, 0)
	vms = []sandbox.VMCount{{OS: "darwin", Count: 1}, {OS: "linux", Node: true, Count: 1}}
	wantSample(t, m, "macvz_vms_running", map[string]string{"os": "darwin", "role": "pod"}, 1)
	wantSample(t, m, "macvz_vms_running", map[string]string{"os": "linux", "role": "node"}, 1)
	m.WatchVMs(func() ([]sandbox.VMCount, error) { return nil, errors.New("store closed") })
	if _, err := m.Gatherer().Gather(); err == nil || !strings.Contains(err.Error(), "store closed") {
		t.Errorf("a failed count: %v", err)
	}
}

// TestServe: /metrics answers in the text format with the standard
// collectors and ours; stop ends the server.
func TestServe(t *testing.T) {
	m := New("qemu", "test")
	m.BootDone("linux", false, time.Second, nil)
	url, stop, err := m.Serve("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(url, "http://127.0.0.1:") || !strings.HasSuffix(url, "/metrics") || strings.HasSuffix(url, ":0/metrics") {
		t.Errorf("url %q", url)
	}
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, want := range []string{
		`macvz_vm_boot_duration_seconds_count{kind="cold",os="linux",result="ok"} 1`,
		"go_goroutines ", "process_start_time_seconds ", "macvz_build_info{",
	} {
		if !strings.Contains(string(body), want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
	if resp, err := http.Post(url, "text/plain", nil); err == nil {
		if resp.StatusCode != http.StatusMethodNotAllowed {
			t.Errorf("POST /metrics: %s", resp.Status)
		}
		resp.Body.Close()
	}
	stop()
	if _, err := http.Get(url); err == nil {
		t.Error("/metrics still answers after stop")
	}
	if _, _, err := m.Serve("127.0.0.1:99999"); err == nil {
		t.Error("Serve on a bad address succeeded")
	}
}

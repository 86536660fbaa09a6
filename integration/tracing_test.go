package integration

import (
	"context"
	"encoding/hex"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	coltrace "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/proto"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// otlpReceiver is the collector end of OTLP/HTTP (POST /v1/traces, a
// protobuf ExportTraceServiceRequest): it keeps every span it is sent.
type otlpReceiver struct {
	url   string
	mu    sync.Mutex
	spans []*tracepb.Span
	svc   map[string]bool // service.name values seen
	hosts map[string]bool // host.name values seen
}

func startOTLPReceiver(t *testing.T) *otlpReceiver {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	r := &otlpReceiver{url: "http://" + ln.Addr().String(), svc: map[string]bool{}, hosts: map[string]bool{}}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		body, err := io.ReadAll(io.LimitReader(req.Body, 64<<20))
		var msg coltrace.ExportTraceServiceRequest
		if err == nil {
			err = proto.Unmarshal(body, &msg)
		}
		if req.URL.Path != "/v1/traces" || err != nil {
			http.Error(w, "want a protobuf ExportTraceServiceRequest on /v1/traces", http.StatusBadRequest)
			return
		}
		r.mu.Lock()
		for _, rs := range msg.GetResourceSpans() {
			for _, kv := range rs.GetResource().GetAttributes() {
				switch kv.GetKey() {
				case "service.name":
					r.svc[kv.GetValue().GetStringValue()] = true
				case "host.name":
					r.hosts[kv.GetValue().GetStringValue()] = true
				}
			}
			for _, ss := range rs.GetScopeSpans() {
				r.spans = append(r.spans, ss.GetSpans()...)
			}
		}
		r.mu.Unlock()
		out, _ := proto.Marshal(&coltrace.ExportTraceServiceResponse{})
		w.Header().Set("Content-Type", "application/x-protobuf")
		w.Write(out)
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return r
}

// waitFor returns the spans received once ok says they are all there,
// or fails after a while (the daemon sends in batches, every 5 s).
func (r *otlpReceiver) waitFor(t *testing.T, ok func([]*tracepb.Span) bool) []*tracepb.Span {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		r.mu.Lock()
		spans := append([]*tracepb.Span(nil), r.spans...)
		r.mu.Unlock()
		if ok(spans) {
			return spans
		}
		if time.Now().After(deadline) {
			var names []string
			for _, s := range spans {
				names = append(names, s.GetName())
			}
			t.Fatalf("the collector did not get the spans wanted; it got %d: %s", len(spans), strings.Join(names, ", "))
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func spanAttr(s *tracepb.Span, key string) string {
	for _, kv := range s.GetAttributes() {
		if kv.GetKey() == key {
			return kv.GetValue().GetStringValue()
		}
	}
	return ""
}

// TestTracing: with [tracing] endpoint set, the daemon sends a real
// collector (OTLP/HTTP) a span per CRI call, joined to the caller's trace
// when the call carries a W3C traceparent (as kubelet's do with its
// tracing on), and under StartContainer the VM's boot with a span per
// phase, laid end to end within it.
func TestTracing(t *testing.T) {
	col := startOTLPReceiver(t)
	v := newVMTestIn(t, nil, "[vm]\nwarm_start = false\n[tracing]\nendpoint = \""+col.url+"\"\nservice_name = \"macvz-test\"\n")
	rt := v.d.runtimeClient(t)
	// The caller's trace: kubelet's traceparent on every call.
	traceID := "4bf92f3577b34da6a3ce929d0e0e4736"
	ctx := metadata.AppendToOutgoingContext(context.Background(), "traceparent", "00-"+traceID+"-00f067aa0ba902b7-01")
	cfg := &runtimeapi.PodSandboxConfig{
		Metadata:     &runtimeapi.PodSandboxMetadata{Name: "traced", Namespace: "tracing", Uid: "traced-uid"},
		LogDirectory: t.TempDir(),
		Linux: &runtimeapi.LinuxPodSandboxConfig{SecurityContext: &runtimeapi.LinuxSandboxSecurityContext{
			NamespaceOptions: &runtimeapi.NamespaceOption{Network: runtimeapi.NamespaceMode_NODE}}},
	}
	pod, ctr, err := runSleeperTimed(ctx, rt, cfg, v.plain, nil)
	if err != nil {
		t.Fatal(err)
	}
	if r, err := rt.ExecSync(ctx, &runtimeapi.ExecSyncRequest{ContainerId: ctr, Cmd: []string{"true"}}); err != nil || r.ExitCode != 0 {
		t.Fatalf("ExecSync: %v %v", r, err)
	}

	byName := func(spans []*tracepb.Span, name string) []*tracepb.Span {
		var out []*tracepb.Span
		for _, s := range spans {
			if s.GetName() == name {
				out = append(out, s)
			}
		}
		return out
	}
	// early_boot: QEMU's driver saw the agent's first console line (the
	// guest's clock cannot have run longer than the host's since the VM
	// started, so the phase is never left out for being negative).
	phases := []string{"prepare", "shim", "vm_start", "early_boot", "kernel", "agent_init", "hello", "shim_start", "setup"}
	spans := col.waitFor(t, func(spans []*tracepb.Span) bool {
		for _, n := range append([]string{"runtime.v1.RuntimeService/RunPodSandbox", "runtime.v1.RuntimeService/StartContainer",
			"runtime.v1.RuntimeService/ExecSync", "macvz.vm.boot"}, phases...) {
			if !strings.HasPrefix(n, "runtime.") && !strings.HasPrefix(n, "macvz.") {
				n = "macvz.vm.boot." + n
			}
			if len(byName(spans, n)) == 0 {
				return false
			}
		}
		return true
	})
	col.mu.Lock()
	if !col.svc["macvz-test"] {
		t.Errorf("no span came with service.name macvz-test: %v", col.svc)
	}
	if host, _ := os.Hostname(); !col.hosts[host] {
		t.Errorf("no span came with host.name %s: %v", host, col.hosts)
	}
	col.mu.Unlock()
	for _, s := range spans {
		// This test's own calls (the harness pulled the images before).
		switch s.GetName() {
		case "runtime.v1.RuntimeService/RunPodSandbox", "runtime.v1.RuntimeService/CreateContainer",
			"runtime.v1.RuntimeService/StartContainer", "runtime.v1.RuntimeService/ExecSync":
		default:
			continue
		}
		if hex.EncodeToString(s.GetTraceId()) != traceID {
			t.Errorf("%s is in trace %x, not the caller's %s", s.GetName(), s.GetTraceId(), traceID)
		}
	}
	start := byName(spans, "runtime.v1.RuntimeService/StartContainer")[0]
	boot := byName(spans, "macvz.vm.boot")[0]
	if string(boot.GetParentSpanId()) != string(start.GetSpanId()) || spanAttr(boot, "macvz.sandbox.id") != pod ||
		spanAttr(boot, "macvz.vm.boot_kind") != "cold" || spanAttr(boot, "macvz.vm.os") != "linux" {
		t.Errorf("the boot's span %v: want it under StartContainer's, for sandbox %s, cold, linux", boot, pod)
	}
	if boot.GetStatus().GetCode() == tracepb.Status_STATUS_CODE_ERROR {
		t.Errorf("the boot's span says it failed: %v", boot.GetStatus())
	}
	// The phases: children of the boot, one after the other, inside it.
	at := boot.GetStartTimeUnixNano()
	for _, name := range phases {
		ps := byName(spans, "macvz.vm.boot."+name)
		if len(ps) != 1 {
			t.Fatalf("%d spans for phase %s, want 1", len(ps), name)
		}
		p := ps[0]
		if string(p.GetParentSpanId()) != string(boot.GetSpanId()) || p.GetStartTimeUnixNano() != at || p.GetEndTimeUnixNano() < p.GetStartTimeUnixNano() {
			t.Errorf("phase %s: %d..%d under %x, want from %d under the boot", name, p.GetStartTimeUnixNano(), p.GetEndTimeUnixNano(), p.GetParentSpanId(), at)
		}
		at = p.GetEndTimeUnixNano()
	}
	// The kernel's phase is most of a cold boot under TCG, and the
	// phases end about when the boot does (its last records after them).
	k := byName(spans, "macvz.vm.boot.kernel")[0]
	if d := time.Duration(k.GetEndTimeUnixNano() - k.GetStartTimeUnixNano()); d < 100*time.Millisecond {
		t.Errorf("the kernel phase took %v", d)
	}
	if at > boot.GetEndTimeUnixNano()+uint64(time.Second) {
		t.Errorf("the phases end %v after the boot", time.Duration(at-boot.GetEndTimeUnixNano()))
	}
}

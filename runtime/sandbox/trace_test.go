package sandbox

import (
	"context"
	"errors"
	"slices"
	"testing"
	"time"

	"go.opentelemetry.io/otel"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"

	"github.com/macvz/macvz/runtime/agentapi"
	"github.com/macvz/macvz/runtime/shimapi"
)

func TestPhaseSpanName(t *testing.T) {
	for in, want := range map[string]string{"Prepare": "prepare", "AgentInit": "agent_init", "VMStart": "vm_start", "ShimStart": "shim_start", "Hello": "hello", "EarlyBoot": "early_boot"} {
		if got := phaseSpanName(in); got != want {
			t.Errorf("phaseSpanName(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestBootPhases(t *testing.T) {
	resp := &shimapi.StartResponse{VmStartNs: int64(60 * time.Millisecond), BootNs: int64(3500 * time.Millisecond),
		Agent: &agentapi.InfoResponse{StartedUptimeNs: int64(2600 * time.Millisecond), ServingUptimeNs: int64(2800 * time.Millisecond), ModulesLoadedUptimeNs: int64(3100 * time.Millisecond)}}
	phases, mods := bootPhases(time.Millisecond, 9*time.Millisecond, 3510*time.Millisecond, 0, 110*time.Millisecond, resp, true)
	want := []bootPhase{{"Prepare", time.Millisecond}, {"Shim", 8 * time.Millisecond}, {"VMStart", 60 * time.Millisecond},
		{"Kernel", 2600 * time.Millisecond}, {"AgentInit", 200 * time.Millisecond}, {"Hello", 640 * time.Millisecond},
		{"ShimStart", time.Millisecond}, {"Setup", 110 * time.Millisecond}}
	if !slices.Equal(phases, want) || mods != 3100*time.Millisecond {
		t.Errorf("cold boot phases %v, modules %v; want %v, 3.1s", phases, mods, want)
	}
	// The log line's attributes, as BenchmarkPodStart and operators read them.
	attrs := bootPhaseAttrs(phases, mods)
	wantAttrs := []any{"phasePrepare", "1ms", "phaseShim", "8ms", "phaseVMStart", "60ms", "phaseKernel", "2.6s", "phaseAgentInit", "200ms",
		"phaseHello", "640ms", "modulesLoaded", "3.1s", "phaseShimStart", "1ms", "phaseSetup", "110ms"}
	if !slices.Equal(attrs, wantAttrs) {
		t.Errorf("attributes %v, want %v", attrs, wantAttrs)
	}
	// With the agent's first console line seen 3.0 s into the boot: the
	// VM's early boot before the guest's clock (3.0 s - 60 ms - 2.8 s)
	// and Hello from that line on.
	resp.AgentLineNs = int64(3000 * time.Millisecond)
	phases, _ = bootPhases(time.Millisecond, 9*time.Millisecond, 3510*time.Millisecond, 0, 110*time.Millisecond, resp, true)
	want = []bootPhase{{"Prepare", time.Millisecond}, {"Shim", 8 * time.Millisecond}, {"VMStart", 60 * time.Millisecond},
		{"EarlyBoot", 140 * time.Millisecond}, {"Kernel", 2600 * time.Millisecond}, {"AgentInit", 200 * time.Millisecond},
		{"Hello", 500 * time.Millisecond}, {"ShimStart", time.Millisecond}, {"Setup", 110 * time.Millisecond}}
	if !slices.Equal(phases, want) {
		t.Errorf("cold boot phases with the console line %v; want %v", phases, want)
	}
	// A line that cannot be (before the guest's clock says the agent
	// served, or after the boot ended) is not used.
	for _, line := range []time.Duration{2500 * time.Millisecond, 3600 * time.Millisecond} {
		resp.AgentLineNs = int64(line)
		phases, _ = bootPhases(time.Millisecond, 9*time.Millisecond, 3510*time.Millisecond, 0, 110*time.Millisecond, resp, true)
		if len(phases) != 8 || phases[5] != (bootPhase{"Hello", 640 * time.Millisecond}) {
			t.Errorf("console line at %v: phases %v, want Hello 640ms and no EarlyBoot", line, phases)
		}
	}
	// A warm start has no kernel of its own: one guest phase, and a save.
	phases, mods = bootPhases(time.Millisecond, 9*time.Millisecond, 400*time.Millisecond, 50*time.Millisecond, 20*time.Millisecond,
		&shimapi.StartResponse{VmStartNs: int64(60 * time.Millisecond), BootNs: int64(380 * time.Millisecond)}, false)
	if len(phases) != 7 || phases[3] != (bootPhase{"Guest", 320 * time.Millisecond}) || phases[5] != (bootPhase{"Save", 50 * time.Millisecond}) || mods != 0 {
		t.Errorf("warm boot phases %v, modules %v", phases, mods)
	}
}

// TestBootSpans: a boot's span under the caller's, a child per phase laid
// end to end from the boot's start, and a failed boot's span marked so.
func TestBootSpans(t *testing.T) {
	rec := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
	prev := otel.GetTracerProvider()
	otel.SetTracerProvider(tp)
	t.Cleanup(func() { otel.SetTracerProvider(prev) })

	ctx, call := tp.Tracer("test").Start(context.Background(), "runtime.v1.RuntimeService/StartContainer")
	start := time.Now()
	bctx, span := startBootSpan(ctx, start, "sb1", "linux", "cold")
	phases := []bootPhase{{"Prepare", time.Millisecond}, {"Kernel", 2 * time.Second}, {"Setup", 100 * time.Millisecond}}
	traceBootPhases(bctx, start, phases)
	endBootSpan(span, nil)
	_, failed := startBootSpan(ctx, time.Now(), "sb2", "darwin", "warm")
	endBootSpan(failed, errors.New("no slot"))
	call.End()

	ended := rec.Ended()
	byName := map[string]sdktrace.ReadOnlySpan{}
	for _, s := range ended {
		byName[s.Name()+"/"+s.Status().Code.String()] = s
	}
	boot := byName["macvz.vm.boot/Unset"]
	if boot == nil || boot.Parent().SpanID() != call.SpanContext().SpanID() || !boot.StartTime().Equal(start) {
		t.Fatalf("no boot span under the call's: %v", ended)
	}
	t0 := start
	for _, p := range phases {
		s := byName["macvz.vm.boot."+phaseSpanName(p.name)+"/Unset"]
		if s == nil {
			t.Fatalf("no span for phase %s", p.name)
		}
		if s.Parent().SpanID() != boot.SpanContext().SpanID() || !s.StartTime().Equal(t0) || s.EndTime().Sub(s.StartTime()) != p.d {
			t.Errorf("phase %s: parent %v, %v..%v, want under the boot from %v for %v", p.name, s.Parent().SpanID(), s.StartTime(), s.EndTime(), t0, p.d)
		}
		t0 = t0.Add(p.d)
	}
	if f := byName["macvz.vm.boot/Error"]; f == nil || f.Status().Description != "no slot" || len(f.Events()) == 0 {
		t.Errorf("the failed boot's span: %v", f)
	}
	if len(ended) != 2+len(phases)+1 {
		t.Errorf("%d spans, want %d", len(ended), 2+len(phases)+1)
	}
}

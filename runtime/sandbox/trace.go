package sandbox

import (
	"context"
	"strings"
	"time"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"
)

// tracer makes the boot's spans through the global tracer provider: the
// daemon's [tracing] one (cri.startTracing), or OpenTelemetry's no-op
// one, which makes these calls nearly free, while tracing is off.
var tracer = otel.Tracer("github.com/macvz/macvz/runtime/sandbox")

// startBootSpan starts, at start, the span of one boot attempt of
// sandbox id's VM (kind: BootCold, ...), under the CRI call's span in ctx
// when there is one.
func startBootSpan(ctx context.Context, start time.Time, id, os, kind string) (context.Context, trace.Span) {
	return tracer.Start(ctx, "macvz.vm.boot", trace.WithTimestamp(start), trace.WithAttributes(
		attribute.String("macvz.sandbox.id", id),
		attribute.String("macvz.vm.os", os),
		attribute.String("macvz.vm.boot_kind", kind),
	))
}

// endBootSpan ends a boot's span, failed when err is not nil.
func endBootSpan(span trace.Span, err error) {
	if err != nil {
		span.RecordError(err)
		span.SetStatus(codes.Error, err.Error())
	}
	span.End()
}

// traceBootPhases adds to the boot's span in ctx a child span for each of
// its phases, one after the other from start, as bootPhases measured
// them ("macvz.vm.boot.kernel", ...): where every millisecond of a start
// went, for an operator's tracing backend.
func traceBootPhases(ctx context.Context, start time.Time, phases []bootPhase) {
	if !trace.SpanFromContext(ctx).IsRecording() {
		return
	}
	t := start
	for _, p := range phases {
		end := t.Add(p.d)
		_, s := tracer.Start(ctx, "macvz.vm.boot."+phaseSpanName(p.name), trace.WithTimestamp(t))
		s.End(trace.WithTimestamp(end))
		t = end
	}
}

// phaseSpanName is a phase's name in span style: "AgentInit" is
// "agent_init", "VMStart" "vm_start".
func phaseSpanName(name string) string {
	var b strings.Builder
	for i, r := range name {
		upper := r >= 'A' && r <= 'Z'
		if upper && i > 0 {
			prev := rune(name[i-1])
			nextLower := i+1 < len(name) && name[i+1] >= 'a' && name[i+1] <= 'z'
			if prev >= 'a' && prev <= 'z' || nextLower && prev >= 'A' && prev <= 'Z' {
				b.WriteByte('_')
			}
		}
		if upper {
			r += 'a' - 'A'
		}
		b.WriteRune(r)
	}
	return b.String()
}

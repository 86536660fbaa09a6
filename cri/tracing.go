package cri

import (
	"context"
	"fmt"
	"log/slog"
	"net/url"
	"os"
	"sync"
	"time"

	"go.opentelemetry.io/contrib/instrumentation/google.golang.org/grpc/otelgrpc"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"google.golang.org/grpc"

	"github.com/macvz/macvz/cri/config"
)

// The daemon's OpenTelemetry spans ([tracing]): the CRI server's calls
// through otelgrpc's stats handler, and what runtime/sandbox adds under
// them (a VM's boot and its phases) through the global tracer provider,
// which stays OpenTelemetry's no-op one while tracing is off.

// tracesURL is where the exporter posts: the collector's traces path
// (/v1/traces) under a base URL, as OTEL_EXPORTER_OTLP_ENDPOINT means
// it, or the URL as given when it names a path of its own.
func tracesURL(endpoint string) string {
	u, err := url.Parse(endpoint)
	if err != nil || (u.Path != "" && u.Path != "/") {
		return endpoint
	}
	u.Path = "/v1/traces"
	return u.String()
}

// exportErrors is OpenTelemetry's error handler while tracing is on: a
// collector that is down fails every batch (every 5 s), so it warns at
// most once per interval, with how many failures it did not show.
type exportErrors struct {
	log    *slog.Logger
	every  time.Duration
	mu     sync.Mutex
	last   time.Time
	unseen int
}

func (e *exportErrors) Handle(err error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if !e.last.IsZero() && time.Since(e.last) < e.every {
		e.unseen++
		return
	}
	e.log.Warn("tracing: spans not delivered", "err", err, "failures_not_shown", e.unseen)
	e.last, e.unseen = time.Now(), 0
}

// startTracing installs the tracer provider [tracing] asks for and
// returns the CRI server's option for it (none when off) and the
// function that flushes and stops it.
func startTracing(ctx context.Context, cfg config.Tracing) ([]grpc.ServerOption, func(), error) {
	if cfg.Endpoint == "" {
		return nil, func() {}, nil
	}
	exp, err := otlptracehttp.New(ctx, otlptracehttp.WithEndpointURL(tracesURL(cfg.Endpoint)))
	if err != nil {
		return nil, nil, fmt.Errorf("tracing.endpoint %q: %w", cfg.Endpoint, err)
	}
	attrs := []attribute.KeyValue{
		attribute.String("service.name", cfg.ServiceName),
		attribute.String("service.version", RuntimeVersion),
	}
	// A fleet's nodes send to one collector: which node a span is from.
	if h, err := os.Hostname(); err == nil {
		attrs = append(attrs, attribute.String("host.name", h))
	}
	res := resource.NewSchemaless(attrs...)
	tp := sdktrace.NewTracerProvider(
		sdktrace.WithBatcher(exp),
		sdktrace.WithResource(res),
		sdktrace.WithSampler(sdktrace.ParentBased(sdktrace.TraceIDRatioBased(cfg.SamplingRatio))),
	)
	otel.SetTracerProvider(tp)
	otel.SetErrorHandler(&exportErrors{log: slog.Default(), every: time.Minute})
	// kubelet sends W3C trace context with its calls when its own
	// tracing is on: the daemon's spans join its traces.
	otel.SetTextMapPropagator(propagation.TraceContext{})
	slog.Info("tracing on", "endpoint", cfg.Endpoint, "sampling_ratio", cfg.SamplingRatio, "service_name", cfg.ServiceName)
	stop := func() {
		// The spans still queued go out before the daemon exits, within
		// a bound: a collector that is gone must not hold the exit.
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := tp.Shutdown(ctx); err != nil {
			slog.Warn("tracing: flushing the last spans", "err", err)
		}
	}
	opts := []grpc.ServerOption{grpc.StatsHandler(otelgrpc.NewServerHandler(otelgrpc.WithTracerProvider(tp)))}
	return opts, stop, nil
}

// Package opmetrics is the daemon's Prometheus metrics for operators
// ([metrics] address): CRI calls, image pulls, VM boots, running VMs, VM
// slots, warm states, shims and guest agent calls, with the Go runtime's
// and the process's standard collectors, in a registry of its own (not
// the client library's global one, which other libraries may fill).
//
// Each layer tells it what happened through one narrow hook, and only
// this package knows Prometheus: gRPC interceptors for the CRI,
// imagestore.Options.PullDone for pulls, sandbox.Recorder for the
// sandbox controller, shim.AgentCallObserver for agent calls. Labels take
// values from small fixed sets (CRI method, gRPC code, guest OS, result),
// never a sandbox ID, an image name or anything a registry sent, so the
// number of series stays bounded and no credential can reach a label.
package opmetrics

import (
	"context"
	"net/http"
	"path"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"google.golang.org/grpc"
	"google.golang.org/grpc/status"

	"github.com/macvz/macvz/runtime/sandbox"
)

const namespace = "macvz"

// Metrics holds the daemon's metrics. Its methods are safe for concurrent
// use.
type Metrics struct {
	reg     *prometheus.Registry
	backend string

	criCalls     *prometheus.HistogramVec
	pulls        *prometheus.HistogramVec
	pullBytes    *prometheus.CounterVec
	boots        *prometheus.HistogramVec
	slotRefusals *prometheus.CounterVec
	slotWaits    *prometheus.HistogramVec
	warmLookups  *prometheus.CounterVec
	warmSaves    *prometheus.CounterVec
	shimConnects *prometheus.CounterVec
	shimsLost    prometheus.Counter
	agentCalls   *prometheus.HistogramVec

	// vms counts the running VMs when scraped (WatchVMs).
	vms atomic.Pointer[func() ([]sandbox.VMCount, error)]
}

var _ sandbox.Recorder = (*Metrics)(nil)

// New makes the metrics of a daemon running VMs with backend ("qemu",
// "vz"), at version.
func New(backend, version string) *Metrics {
	m := &Metrics{reg: prometheus.NewRegistry(), backend: backend}
	m.criCalls = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Namespace: namespace, Subsystem: "cri", Name: "request_duration_seconds",
		Help:    "CRI calls by method (RunPodSandbox, PullImage, ...) and gRPC code, and how long they took; _count is the number of calls. A stream (GetContainerEvents) is counted when it ends.",
		Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 120, 300},
	}, []string{"method", "code"})
	m.pulls = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Namespace: namespace, Subsystem: "image", Name: "pull_duration_seconds",
		Help:    "Image pulls by result (ok, error) and how long they took; concurrent pulls of one image share one download and count once.",
		Buckets: []float64{.1, .5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1200, 1800, 3600},
	}, []string{"result"})
	m.pullBytes = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: namespace, Subsystem: "image", Name: "pull_bytes_total",
		Help: "Bytes image pulls downloaded from registries (blobs already stored cost none), by the pull's result.",
	}, []string{"result"})
	m.boots = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Namespace: namespace, Subsystem: "vm", Name: "boot_duration_seconds",
		Help:    "VM boot attempts by guest OS, kind (cold, or warm: restored from a saved state) and result (ok, error), and how long each took until the guest was ready; a failed warm attempt is followed by a cold one.",
		Buckets: []float64{.25, .5, 1, 2, 3, 5, 10, 20, 30, 60, 120, 300},
	}, []string{"os", "kind", "result"})
	m.slotRefusals = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: namespace, Subsystem: "vm", Name: "slot_refusals_total",
		Help: "VM boots refused a slot, by guest OS and reason: limit (vm.max_macos_vms or vm.max_linux_vms all taken; kubelet retries) or hypervisor (it refused another VM through every retry).",
	}, []string{"os", "reason"})
	m.slotWaits = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Namespace: namespace, Subsystem: "vm", Name: "slot_wait_seconds",
		Help:    "Waits of VM boots for the hypervisor to take another VM before trying again, by guest OS.",
		Buckets: []float64{.5, 1, 2, 4, 8, 16, 32},
	}, []string{"os"})
	m.warmLookups = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: namespace, Subsystem: "warm_state", Name: "lookups_total",
		Help: "Boots that could restore a saved VM state, by result: hit (a state was there) or miss (the VM boots cold and its state is saved).",
	}, []string{"result"})
	m.warmSaves = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: namespace, Subsystem: "warm_state", Name: "saves_total",
		Help: "Saves of cold-booted VMs' states for warm starts, by result: ok, unsupported (the backend refuses to save such VMs) or error.",
	}, []string{"result"})
	m.shimConnects = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: namespace, Subsystem: "shim", Name: "reconnects_total",
		Help: "Connections made again to the shims of running VMs, by reason: daemon_start (re-attached when the daemon started) or reconnect (after a lost connection). Shims outlive the daemon and are never respawned.",
	}, []string{"reason"})
	m.shimsLost = prometheus.NewCounter(prometheus.CounterOpts{
		Namespace: namespace, Subsystem: "shim", Name: "lost_total",
		Help: "Shims of running VMs found gone; their sandboxes became NotReady.",
	})
	m.agentCalls = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Namespace: namespace, Subsystem: "agent", Name: "call_duration_seconds",
		Help:    "Round trips of the daemon's calls to guest agents through their shims, by agent method and result (ok, error); WaitProcess, which lasts as long as a process, is left out.",
		Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10},
	}, []string{"method", "result"})
	info := prometheus.NewGauge(prometheus.GaugeOpts{
		Namespace: namespace, Name: "build_info",
		Help:        "Always 1: the daemon's version and VM backend.",
		ConstLabels: prometheus.Labels{"version": version, "backend": backend},
	})
	info.Set(1)
	m.reg.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		info, m.criCalls, m.pulls, m.pullBytes, m.boots, m.slotRefusals, m.slotWaits,
		m.warmLookups, m.warmSaves, m.shimConnects, m.shimsLost, m.agentCalls,
		vmCollector{m},
	)
	return m
}

// Gatherer is the metrics' registry.
func (m *Metrics) Gatherer() prometheus.Gatherer { return m.reg }

// Handler serves the metrics in Prometheus's exposition formats.
func (m *Metrics) Handler() http.Handler {
	return promhttp.InstrumentMetricHandler(m.reg, promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{
		Registry:            m.reg,
		MaxRequestsInFlight: 4,
		Timeout:             30 * time.Second,
	}))
}

// WatchVMs sets what counts the running VMs at each scrape (the sandbox
// controller's RunningVMs): a gauge read from the controller's state
// cannot drift the way one kept up by hand would.
func (m *Metrics) WatchVMs(count func() ([]sandbox.VMCount, error)) { m.vms.Store(&count) }

// vmCollector is macvz_vms_running, computed when scraped.
type vmCollector struct{ m *Metrics }

var vmsDesc = prometheus.NewDesc(namespace+"_vms_running",
	"VMs running by backend, guest OS and role (pod, or node: the node VM kubelet runs in), as the daemon's records have them.",
	[]string{"backend", "os", "role"}, nil)

func (c vmCollector) Describe(ch chan<- *prometheus.Desc) { ch <- vmsDesc }

func (c vmCollector) Collect(ch chan<- prometheus.Metric) {
	f := c.m.vms.Load()
	if f == nil {
		return
	}
	vms, err := (*f)()
	if err != nil {
		ch <- prometheus.NewInvalidMetric(vmsDesc, err)
		return
	}
	// Both guest OSes' pod VMs are always there, 0 when none runs, so
	// that alerts and graphs need no absent().
	n := map[[2]string]int{{"linux", "pod"}: 0, {"darwin", "pod"}: 0}
	for _, v := range vms {
		role := "pod"
		if v.Node {
			role = "node"
		}
		n[[2]string{osLabel(v.OS), role}] += v.Count
	}
	for k, v := range n {
		ch <- prometheus.MustNewConstMetric(vmsDesc, prometheus.GaugeValue, float64(v), c.m.backend, k[0], k[1])
	}
}

// osLabel bounds a guest OS label to the ones macvz boots.
func osLabel(os string) string {
	switch os {
	case "linux", "darwin":
		return os
	}
	return "other"
}

func result(err error) string {
	if err != nil {
		return "error"
	}
	return "ok"
}

// UnaryServerInterceptor counts and times unary CRI calls. It must come
// first in the chain, outside the one that turns errors into gRPC
// statuses (and recovers panics), so that it sees the code the client
// gets.
func (m *Metrics) UnaryServerInterceptor() grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		start := time.Now()
		resp, err := handler(ctx, req)
		m.criDone(info.FullMethod, time.Since(start), err)
		return resp, err
	}
}

// StreamServerInterceptor counts and times streaming CRI calls, when
// they end; like UnaryServerInterceptor, it comes first.
func (m *Metrics) StreamServerInterceptor() grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
		start := time.Now()
		err := handler(srv, ss)
		m.criDone(info.FullMethod, time.Since(start), err)
		return err
	}
}

// criDone records one CRI call. gRPC runs interceptors only for the
// methods registered (the CRI's), so the method label is bounded; an
// error that is no gRPC status is Unknown, as the client would see it.
func (m *Metrics) criDone(fullMethod string, d time.Duration, err error) {
	m.criCalls.WithLabelValues(path.Base(fullMethod), status.Code(err).String()).Observe(d.Seconds())
}

// PullDone records one image pull (imagestore.Options.PullDone).
func (m *Metrics) PullDone(fetched int64, took time.Duration, err error) {
	r := result(err)
	m.pulls.WithLabelValues(r).Observe(took.Seconds())
	m.pullBytes.WithLabelValues(r).Add(float64(fetched))
}

// AgentCall records one guest agent call (shim.AgentCallObserver).
func (m *Metrics) AgentCall(method string, took time.Duration, err error) {
	m.agentCalls.WithLabelValues(method, result(err)).Observe(took.Seconds())
}

// BootDone implements sandbox.Recorder.
func (m *Metrics) BootDone(os string, warm bool, d time.Duration, err error) {
	kind := "cold"
	if warm {
		kind = "warm"
	}
	m.boots.WithLabelValues(osLabel(os), kind, result(err)).Observe(d.Seconds())
}

// SlotRefused implements sandbox.Recorder.
func (m *Metrics) SlotRefused(os, why string) {
	m.slotRefusals.WithLabelValues(osLabel(os), why).Inc()
}

// SlotWaited implements sandbox.Recorder.
func (m *Metrics) SlotWaited(os string, d time.Duration) {
	m.slotWaits.WithLabelValues(osLabel(os)).Observe(d.Seconds())
}

// WarmLookup implements sandbox.Recorder.
func (m *Metrics) WarmLookup(hit bool) {
	r := "miss"
	if hit {
		r = "hit"
	}
	m.warmLookups.WithLabelValues(r).Inc()
}

// WarmSaved implements sandbox.Recorder.
func (m *Metrics) WarmSaved(r string) { m.warmSaves.WithLabelValues(r).Inc() }

// ShimReconnected implements sandbox.Recorder.
func (m *Metrics) ShimReconnected(why string) { m.shimConnects.WithLabelValues(why).Inc() }

// ShimLost implements sandbox.Recorder.
func (m *Metrics) ShimLost() { m.shimsLost.Inc() }

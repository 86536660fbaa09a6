package cri

import (
	"sync"
	"time"
)

// kubelet reads a pod's CPU rate (usageNanoCores) only from the runtime
// when PodAndContainerStatsFromCRI is on (cri_stats_provider_linux.go,
// addCRIPodCPUStats): it derives a rate itself only for containers, and
// only on the eviction manager's calls. So the runtime derives it, from
// the cumulative CPU time the agent reports, for pods and containers
// alike: the rate between the newest sample and an earlier one.

// minRateWindow is the least time between the two samples of a rate.
// kubelet asks several times within a moment (one summary lists pod and
// container stats, metrics-server and the eviction manager poll on their
// own): a sample that close to the base keeps the rate already known,
// which would otherwise be the noise of a few milliseconds.
const minRateWindow = time.Second

// rateIdle is how long an ID may go unsampled before its entry goes: a
// sandbox or container removed is never asked about again.
const rateIdle = 10 * time.Minute

type cpuSample struct {
	ts    int64  // the sample's time (unix ns)
	usage uint64 // cumulative CPU time (ns)
}

type cpuRate struct {
	base cpuSample
	// rate is the last rate computed (nanocores); ok says there is one.
	rate uint64
	ok   bool
	seen time.Time
}

// cpuRates are the CPU rates of sandboxes and containers by ID (IDs are
// unique across both and across the daemon's life).
type cpuRates struct {
	mu        sync.Mutex
	m         map[string]*cpuRate
	lastPrune time.Time
	now       func() time.Time
}

func newCPURates() *cpuRates {
	return &cpuRates{m: map[string]*cpuRate{}, now: time.Now}
}

// processCPURates serves every Service of the process: a package value
// because the IDs it is keyed by are unique anyway.
var processCPURates = newCPURates()

// observe records a sample of id's cumulative CPU time taken at ts (unix
// ns) and returns its rate in nanocores, if one is known: none on the
// first sample, nor after the cumulative time went back (a container's
// is that of its live processes, which drops when one exits; a VM
// restarted starts again from zero) until a later sample.
func (r *cpuRates) observe(id string, ts int64, usage uint64) (uint64, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	now := r.now()
	r.pruneLocked(now)
	e, ok := r.m[id]
	if !ok {
		r.m[id] = &cpuRate{base: cpuSample{ts, usage}, seen: now}
		return 0, false
	}
	e.seen = now
	switch {
	case usage < e.base.usage || ts < e.base.ts:
		*e = cpuRate{base: cpuSample{ts, usage}, seen: now}
		return 0, false
	case ts-e.base.ts < int64(minRateWindow):
		return e.rate, e.ok
	}
	e.rate = uint64(float64(usage-e.base.usage) / float64(ts-e.base.ts) * float64(time.Second))
	e.ok = true
	e.base = cpuSample{ts, usage}
	return e.rate, true
}

func (r *cpuRates) pruneLocked(now time.Time) {
	if now.Sub(r.lastPrune) < time.Minute {
		return
	}
	r.lastPrune = now
	for id, e := range r.m {
		if now.Sub(e.seen) > rateIdle {
			delete(r.m, id)
		}
	}
}

package sandbox

import (
	"sort"
	"time"

	"github.com/macvz/macvz/runtime/store"
)

// Recorder is told what the controller does, for the daemon's metrics
// (cri/opmetrics serves them; this package imports no metrics library).
// Every argument comes from a small fixed set (guest OS, outcome), never
// a sandbox's ID or an image's name, so the metrics made of them stay
// few. Calls are made on the goroutine doing the work and must be quick.
type Recorder interface {
	// BootDone: one attempt to boot a VM of guest os ("linux",
	// "darwin"), cold or warm (restoring a saved state), ended after d;
	// err is nil when its guest was ready. A warm attempt that fails is
	// followed by a cold one.
	BootDone(os string, warm bool, d time.Duration, err error)
	// SlotRefused: a boot of os got no VM slot. why is SlotLimit (the
	// daemon's vm.max_*_vms were all taken: the call fails at once and
	// kubelet retries) or SlotHypervisor (the hypervisor refused another
	// VM through every retry).
	SlotRefused(os, why string)
	// SlotWaited: a boot of os waited d for the hypervisor to take
	// another VM before trying again.
	SlotWaited(os string, d time.Duration)
	// WarmLookup: a boot that may restore a saved state found one (hit)
	// or not (it boots cold and saves one).
	WarmLookup(hit bool)
	// WarmSaved: saving a cold-booted VM's state ended, with result
	// WarmSaveOK, WarmSaveUnsupported (the backend refuses to save such
	// VMs; not tried again for them) or WarmSaveFailed.
	WarmSaved(result string)
	// ShimReconnected: the daemon connected again to the shim of a
	// running VM: ShimAtStart (re-attached when the daemon started) or
	// ShimReconnect (after its connection was lost).
	ShimReconnected(why string)
	// ShimLost: the shim of a running VM was found gone; its sandbox is
	// no longer ready.
	ShimLost()
}

// Recorder's reasons and results.
const (
	SlotLimit      = "limit"
	SlotHypervisor = "hypervisor"

	WarmSaveOK          = "ok"
	WarmSaveUnsupported = "unsupported"
	WarmSaveFailed      = "error"

	ShimAtStart   = "daemon_start"
	ShimReconnect = "reconnect"
)

// NopRecorder records nothing.
type NopRecorder struct{}

func (NopRecorder) BootDone(string, bool, time.Duration, error) {}
func (NopRecorder) SlotRefused(string, string)                  {}
func (NopRecorder) SlotWaited(string, time.Duration)            {}
func (NopRecorder) WarmLookup(bool)                             {}
func (NopRecorder) WarmSaved(string)                            {}
func (NopRecorder) ShimReconnected(string)                      {}
func (NopRecorder) ShimLost()                                   {}

// rec is Config.Recorder, or NopRecorder.
func (s *Controller) rec() Recorder {
	if s.cfg.Recorder != nil {
		return s.cfg.Recorder
	}
	return NopRecorder{}
}

// VMCount is how many VMs of one guest OS run; Node is the node VM's
// (runtime/nodevm), apart from the pods'.
type VMCount struct {
	OS    string
	Node  bool
	Count int
}

// RunningVMs counts the VMs whose sandboxes are ready with their VM
// started, as the store has them (a VM that died is counted until a
// status call notices), by guest OS, in a stable order. It reads the
// store: metrics compute it when scraped rather than keeping a count.
func (s *Controller) RunningVMs() ([]VMCount, error) {
	sbs, err := s.st.Sandboxes(func(sb *store.Sandbox) bool {
		return sb.VMStarted && sb.State == store.SandboxReady
	})
	if err != nil {
		return nil, err
	}
	type key struct {
		os   string
		node bool
	}
	n := map[key]int{}
	for _, sb := range sbs {
		n[key{sb.VMOS, sb.Node}]++
	}
	out := make([]VMCount, 0, len(n))
	for k, c := range n {
		out = append(out, VMCount{OS: k.os, Node: k.node, Count: c})
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].OS != out[j].OS {
			return out[i].OS < out[j].OS
		}
		return !out[i].Node && out[j].Node
	})
	return out, nil
}

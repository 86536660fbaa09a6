package sandbox

import (
	"context"
	"fmt"
	"reflect"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/containerd/errdefs"

	"github.com/macvz/macvz/runtime/shim/shimtest"
)

// fakeRecorder keeps what a Recorder is told, as strings.
type fakeRecorder struct {
	mu     sync.Mutex
	events []string
}

func (r *fakeRecorder) add(format string, args ...any) {
	r.mu.Lock()
	r.events = append(r.events, fmt.Sprintf(format, args...))
	r.mu.Unlock()
}

func (r *fakeRecorder) BootDone(os string, warm bool, d time.Duration, err error) {
	r.add("boot %s warm=%v ok=%v timed=%v", os, warm, err == nil, d > 0)
}
func (r *fakeRecorder) SlotRefused(os, why string) { r.add("refused %s %s", os, why) }
func (r *fakeRecorder) SlotWaited(os string, d time.Duration) {
	r.add("waited %s timed=%v", os, d > 0)
}
func (r *fakeRecorder) WarmLookup(hit bool)        { r.add("lookup hit=%v", hit) }
func (r *fakeRecorder) WarmSaved(result string)    { r.add("saved %s", result) }
func (r *fakeRecorder) ShimReconnected(why string) { r.add("reconnected %s", why) }
func (r *fakeRecorder) ShimLost()                  { r.add("lost") }

// take returns the events so far, sorted, and forgets them.
func (r *fakeRecorder) take() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := r.events
	r.events = nil
	sort.Strings(out)
	return out
}

var _ Recorder = (*fakeRecorder)(nil)

// TestRecorder: a cold boot that saves its state, a warm one, the running
// VMs, a refused slot, and the shims found again (or not) after a daemon
// restart are all told to the recorder.
func TestRecorder(t *testing.T) {
	requireRoot(t)
	ctx := context.Background()
	dir := t.TempDir()
	shims := shimtest.New()
	rec := &fakeRecorder{}
	withRec := func(c *Config) { c.Recorder = rec }
	s, st := newFakeController(t, dir, shims, withRec)
	img := testImage(t, s)

	createSandbox(t, s, "sb1", "sb1", img)
	if got, want := rec.take(), []string{"boot linux warm=false ok=true timed=true", "lookup hit=false", "saved ok"}; !reflect.DeepEqual(got, want) {
		t.Errorf("cold boot: %q, want %q", got, want)
	}
	gone := createSandbox(t, s, "sb2", "sb2", img)
	if got, want := rec.take(), []string{"boot linux warm=true ok=true timed=true", "lookup hit=true"}; !reflect.DeepEqual(got, want) {
		t.Errorf("warm boot: %q, want %q", got, want)
	}
	if vms, err := s.RunningVMs(); err != nil || !reflect.DeepEqual(vms, []VMCount{{OS: "linux", Count: 2}}) {
		t.Errorf("RunningVMs: %+v %v", vms, err)
	}

	s.cfg.MaxLinuxVMs = 2
	if _, _, err := s.reserveVM("sb3", "linux"); !errdefs.IsResourceExhausted(err) {
		t.Errorf("a third Linux VM with two slots: %v", err)
	}
	if got, want := rec.take(), []string{"refused linux limit"}; !reflect.DeepEqual(got, want) {
		t.Errorf("refused slot: %q, want %q", got, want)
	}
	saved := hypervisorBackoff
	hypervisorBackoff = []time.Duration{time.Millisecond}
	defer func() { hypervisorBackoff = saved }()
	s.retryExhausted(ctx, "sb3", "darwin", func() error { return errdefs.ErrResourceExhausted })
	if got, want := rec.take(), []string{"refused darwin hypervisor", "waited darwin timed=true"}; !reflect.DeepEqual(got, want) {
		t.Errorf("hypervisor refusals: %q, want %q", got, want)
	}

	// The daemon ends; one shim dies while it is away.
	s.Close()
	st.Close()
	s.sn.Close()
	shims.Kill(ctx, gone.Dir)
	s2, _ := newFakeController(t, dir, shims, withRec)
	if got, want := rec.take(), []string{"lost", "reconnected daemon_start"}; !reflect.DeepEqual(got, want) {
		t.Errorf("daemon start: %q, want %q", got, want)
	}
	if vms, err := s2.RunningVMs(); err != nil || !reflect.DeepEqual(vms, []VMCount{{OS: "linux", Count: 1}}) {
		t.Errorf("RunningVMs after the restart: %+v %v", vms, err)
	}
}

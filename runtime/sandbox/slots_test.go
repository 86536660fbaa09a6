package sandbox

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/containerd/errdefs"

	"github.com/macvz/macvz/runtime/store"
)

func TestVMSlots(t *testing.T) {
	s := newTestController(t)
	s.cfg.MaxMacOSVMs = 2
	for _, sb := range []store.Sandbox{
		{ID: "running-mac-1", Name: "ci-1", State: store.SandboxReady, VMStarted: true, VMOS: "darwin", VMSlot: 1},
		{ID: "stopped-mac", Name: "old", State: store.SandboxNotReady, VMOS: "darwin"},
		{ID: "running-linux", Name: "lin", State: store.SandboxReady, VMStarted: true, VMOS: "linux"},
	} {
		if err := s.st.CreateSandbox(&sb); err != nil {
			t.Fatal(err)
		}
	}
	// One macOS VM runs: a second may boot.
	slot, release, err := s.reserveVM("booting-mac", "darwin")
	if err != nil || slot != 2 {
		t.Fatalf("second macOS VM: slot %d, %v", slot, err)
	}
	if c := s.Capacity(); c.OK || c.Reason != "macOSVMSlotsFull" || !strings.Contains(c.Message, "macOS VMs: 2 of 2") || !strings.Contains(c.Message, "Linux VMs: 1 (no bound)") {
		t.Errorf("condition with both slots taken: %+v", c)
	}
	// A third is refused, naming the holders; Linux is not bounded.
	_, _, err = s.reserveVM("third-mac", "darwin")
	if !errdefs.IsResourceExhausted(err) || !strings.Contains(err.Error(), "ci-1 (running-mac-") || !strings.Contains(err.Error(), "booting-mac (booting-mac, booting)") {
		t.Errorf("third macOS VM: %v", err)
	}
	if n, rl, err := s.reserveVM("linux-2", "linux"); err != nil || n != 1 {
		t.Errorf("a Linux VM: slot %d, %v", n, err)
	} else {
		rl()
	}
	// The boot ends (a booted VM then counts through the store).
	release()
	n3, r3, err := s.reserveVM("third-mac", "darwin")
	if err != nil || n3 != 2 {
		t.Errorf("after a boot ended: slot %d, %v", n3, err)
	} else {
		r3()
	}
	// Slot 1 frees when its VM stops; the lowest free one is taken.
	if _, err := s.st.UpdateSandbox("running-mac-1", func(r *store.Sandbox) error { r.State = store.SandboxNotReady; return nil }); err != nil {
		t.Fatal(err)
	}
	n4, r4, err := s.reserveVM("fourth-mac", "darwin")
	if err != nil || n4 != 1 {
		t.Errorf("after the slot-1 VM stopped: slot %d, %v", n4, err)
	}
	n5, r5, err := s.reserveVM("fifth-mac", "darwin")
	if err != nil || n5 != 2 {
		t.Errorf("next to a booting slot-1 VM: slot %d, %v", n5, err)
	}
	r4()
	r5()
	if _, err := s.st.UpdateSandbox("running-mac-1", func(r *store.Sandbox) error { r.State = store.SandboxReady; return nil }); err != nil {
		t.Fatal(err)
	}
	if c := s.Capacity(); !c.OK || !strings.Contains(c.Message, "macOS VMs: 1 of 2") {
		t.Errorf("condition with a free slot: %+v", c)
	}
}

func TestRetryExhausted(t *testing.T) {
	s := newTestController(t)
	saved := hypervisorBackoff
	hypervisorBackoff = []time.Duration{time.Millisecond, time.Millisecond}
	defer func() { hypervisorBackoff = saved }()
	refusal := fmt.Errorf("VZErrorDomain code 6: %w", errdefs.ErrResourceExhausted)

	calls := 0
	err := s.retryExhausted(context.Background(), "sb", "darwin", func() error {
		if calls++; calls < 3 {
			return refusal
		}
		return nil
	})
	if err != nil || calls != 3 {
		t.Errorf("refused twice then booted: err %v after %d calls", err, calls)
	}
	calls = 0
	err = s.retryExhausted(context.Background(), "sb", "darwin", func() error { calls++; return refusal })
	if !errdefs.IsResourceExhausted(err) || calls != 3 || !strings.Contains(err.Error(), "after 3 attempts") {
		t.Errorf("always refused: %v after %d calls", err, calls)
	}
	other := errors.New("disk missing")
	calls = 0
	if err := s.retryExhausted(context.Background(), "sb", "darwin", func() error { calls++; return other }); err != other || calls != 1 {
		t.Errorf("another error is not retried: %v after %d calls", err, calls)
	}
}

// TestNodeVMTakesNoSlot: the node VM boots whatever the Linux bound and
// counts toward it for no pod.
func TestNodeVMTakesNoSlot(t *testing.T) {
	s := newTestController(t)
	s.cfg.MaxLinuxVMs = 1
	for _, sb := range []store.Sandbox{
		{ID: "node-vm", Name: "macvz-node", State: store.SandboxReady, VMStarted: true, VMOS: "linux", Node: true},
		{ID: "node-vm-2", Name: "macvz-node-2", State: store.SandboxReady, Node: true},
	} {
		if err := s.st.CreateSandbox(&sb); err != nil {
			t.Fatal(err)
		}
	}
	slot, release, err := s.reserveVM("pod-1", "linux")
	if err != nil || slot != 1 {
		t.Fatalf("a pod's VM beside the running node VM: slot %d, %v; want slot 1", slot, err)
	}
	defer release()
	// The pods' one slot is taken: a node VM still boots.
	if n, rl, err := s.reserveVM("node-vm-2", "linux"); err != nil || n != 0 {
		t.Errorf("the node VM with the Linux slots full: slot %d, %v; want no slot and no error", n, err)
	} else {
		rl()
	}
	_, holders, err := s.Slots("linux")
	if err != nil {
		t.Fatal(err)
	}
	if len(holders) != 1 || !strings.Contains(fmt.Sprint(holders), "pod-1") {
		t.Errorf("slot holders %v, want pod-1's booting VM alone (the node VM is none)", holders)
	}
}

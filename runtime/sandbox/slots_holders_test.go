package sandbox

import (
	"testing"

	"github.com/macvz/macvz/runtime/store"
)

// Slots lists the running and booting holders with their pods, in slot
// order, and the bound.
func TestSlotsHolders(t *testing.T) {
	s := newTestController(t)
	s.cfg.MaxMacOSVMs = 2
	for _, sb := range []store.Sandbox{
		{ID: "running-mac", Name: "ci-1", State: store.SandboxReady, VMStarted: true, VMOS: "darwin", VMSlot: 2,
			Spec: &store.SandboxSpec{Namespace: "ci", Name: "job-a", UID: "u1"}},
		{ID: "booting-mac", Name: "ci-2", State: store.SandboxReady, Spec: &store.SandboxSpec{Namespace: "ci", Name: "job-b"}},
		{ID: "stopped-mac", Name: "old", State: store.SandboxNotReady, VMOS: "darwin"},
	} {
		if err := s.st.CreateSandbox(&sb); err != nil {
			t.Fatal(err)
		}
	}
	_, release, err := s.reserveVM("booting-mac", "darwin")
	if err != nil {
		t.Fatal(err)
	}
	defer release()
	limit, hs, err := s.Slots("darwin")
	if err != nil {
		t.Fatal(err)
	}
	want := []SlotHolder{
		{SandboxID: "booting-mac", Namespace: "ci", Name: "job-b", Slot: 1, Booting: true},
		{SandboxID: "running-mac", Namespace: "ci", Name: "job-a", UID: "u1", Slot: 2},
	}
	if limit != 2 || len(hs) != len(want) || hs[0] != want[0] || hs[1] != want[1] {
		t.Fatalf("Slots(darwin) = %d, %+v; want 2, %+v", limit, hs, want)
	}
	if limit, hs, err := s.Slots("linux"); err != nil || limit != 0 || len(hs) != 0 {
		t.Fatalf("Slots(linux) = %d, %+v, %v", limit, hs, err)
	}
}

package sandbox

import (
	"context"
	"runtime"
	"strings"
	"testing"

	"github.com/containerd/errdefs"

	"github.com/macvz/macvz/runtime/shim/shimtest"
	"github.com/macvz/macvz/runtime/store"
)

func TestResize(t *testing.T) {
	requireRoot(t)
	ctx := context.Background()
	shims := shimtest.New()
	s, st := newFakeController(t, t.TempDir(), shims)
	img := testImage(t, s)
	sb := createSandbox(t, s, "sb1", "web_ns_u1_0", img)
	cpus := min(2, runtime.NumCPU())
	if sb.VMCPUs != cpus || sb.VMMemoryBytes != 320<<20 || sb.VMMemoryTarget != 0 {
		t.Fatalf("the booted size recorded: %d CPUs, %d bytes, target %d", sb.VMCPUs, sb.VMMemoryBytes, sb.VMMemoryTarget)
	}
	c := shims.Running(sb.Dir)
	record := func() store.Sandbox {
		t.Helper()
		r, err := st.Sandbox("sb1")
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	milli := int64(cpus) * 1000
	waits := c.Guest.Setup().ModuleWaits // the boot's (a warm state saved)

	// Down: the balloon takes memory back (rounded up to whole MiB).
	if err := s.Resize(ctx, "sb1", store.Resources{MilliCPU: milli, MemoryBytes: 200<<20 - 5}); err != nil {
		t.Fatal(err)
	}
	if got := c.MemoryTargets(); len(got) != 1 || got[0] != 200<<20 {
		t.Errorf("balloon targets %v, want [200 MiB]", got)
	}
	// The guest was asked for its late modules (the balloon driver) first.
	if n := c.Guest.Setup().ModuleWaits - waits; n != 1 {
		t.Errorf("%d waits for the guest's modules before the balloon, want 1", n)
	}
	if r := record(); r.VMMemoryTarget != 200<<20 || r.Spec.Resources.MemoryBytes != 200<<20-5 {
		t.Errorf("record: target %d, spec resources %+v", r.VMMemoryTarget, r.Spec.Resources)
	}
	// The same again: nothing to do.
	if err := s.Resize(ctx, "sb1", store.Resources{MilliCPU: milli, MemoryBytes: 200 << 20}); err != nil || len(c.MemoryTargets()) != 1 {
		t.Errorf("an unchanged size: %v, targets %v", err, c.MemoryTargets())
	}
	// Back up to the boot size.
	if err := s.Resize(ctx, "sb1", store.Resources{MemoryBytes: 320 << 20}); err != nil {
		t.Fatal(err)
	}
	if got := c.MemoryTargets(); len(got) != 2 || got[1] != 320<<20 || record().VMMemoryTarget != 0 {
		t.Errorf("back to the boot size: targets %v, record target %d", got, record().VMMemoryTarget)
	}
	// Past the boot size: refused, nothing asked of the VM.
	err := s.Resize(ctx, "sb1", store.Resources{MemoryBytes: 1 << 30})
	if !errdefs.IsFailedPrecondition(err) || !strings.Contains(err.Error(), "not grow past its boot size") || len(c.MemoryTargets()) != 2 {
		t.Errorf("more than the boot memory: %v, targets %v", err, c.MemoryTargets())
	}
	// A CPU limit below the vCPUs: the guest's pod cgroup gets the quota
	// (the memory is applied too); the same limit again asks nothing.
	if cpus > 1 {
		if err := s.Resize(ctx, "sb1", store.Resources{MilliCPU: 500, MemoryBytes: 256 << 20}); err != nil {
			t.Fatalf("fewer CPUs than vCPUs: %v", err)
		}
		if r := record(); r.VMMemoryTarget != 256<<20 || r.Spec.Resources.MilliCPU != 500 || r.GuestCPUQuota != 50_000 {
			t.Errorf("after a CPU limit below the vCPUs: target %d, spec resources %+v, guest quota %d", r.VMMemoryTarget, r.Spec.Resources, r.GuestCPUQuota)
		}
		if err := s.Resize(ctx, "sb1", store.Resources{MilliCPU: 500, MemoryBytes: 256 << 20}); err != nil {
			t.Fatal(err)
		}
		// Back to all the vCPUs: the quota is lifted.
		if err := s.Resize(ctx, "sb1", store.Resources{MilliCPU: milli, MemoryBytes: 256 << 20}); err != nil {
			t.Fatal(err)
		}
		u := c.Guest.Setup().Updates
		if len(u) != 2 || u[0].ContainerId != "" || u[0].CpuQuotaUs != 50_000 || u[0].CpuPeriodUs != 100_000 || u[1].CpuQuotaUs != 0 {
			t.Errorf("the guest's pod cgroup updates: %v; want quota 50000 then none", u)
		}
	}
	// More CPUs than the VM runs: the memory is applied, the CPUs
	// refused, the record keeps the CPU limit the VM has.
	if cpus < runtime.NumCPU() {
		err = s.Resize(ctx, "sb1", store.Resources{MilliCPU: milli + 1000, MemoryBytes: 300 << 20})
		if !errdefs.IsFailedPrecondition(err) || !strings.Contains(err.Error(), "cannot add vCPUs") {
			t.Errorf("more vCPUs: %v", err)
		}
		if r := record(); r.VMMemoryTarget != 300<<20 || r.Spec.Resources.MilliCPU != milli || r.Spec.Resources.MemoryBytes != 300<<20 {
			t.Errorf("after a refused CPU change: target %d, spec resources %+v", r.VMMemoryTarget, r.Spec.Resources)
		}
	}
	// Never below the image's minimum memory.
	if _, target, err := resizePlan(store.Sandbox{VMCPUs: 2, VMMemoryBytes: 4 << 30, VMMinMemory: 2 << 30}, store.Resources{MemoryBytes: 1 << 30}); err != nil || target != 2<<30 {
		t.Errorf("a resize below the image's minimum: target %d, %v; want the 2 GiB minimum", target, err)
	}
	if g := guestCPUQuota(1, 4); g != 1000 {
		t.Errorf("guestCPUQuota(1m, 4 vCPUs) = %d; want the kernel's floor 1000", g)
	}
	// Below what a VM needs: the shim refuses it.
	if err := s.Resize(ctx, "sb1", store.Resources{MemoryBytes: 32 << 20}); !errdefs.IsInvalidArgument(err) {
		t.Errorf("32 MiB: %v", err)
	}

	// A stopped sandbox cannot be resized.
	if err := s.Stop(ctx, "sb1"); err != nil {
		t.Fatal(err)
	}
	if err := s.Resize(ctx, "sb1", store.Resources{MemoryBytes: 256 << 20}); !errdefs.IsFailedPrecondition(err) {
		t.Errorf("a stopped sandbox: %v", err)
	}
}

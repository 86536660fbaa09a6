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

	// Down: the balloon takes memory back (rounded up to whole MiB).
	if err := s.Resize(ctx, "sb1", store.Resources{MilliCPU: milli, MemoryBytes: 200<<20 - 5}); err != nil {
		t.Fatal(err)
	}
	if got := c.MemoryTargets(); len(got) != 1 || got[0] != 200<<20 {
		t.Errorf("balloon targets %v, want [200 MiB]", got)
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
	// Another vCPU count (fewer: the host caps more at its own): the
	// memory is applied, the CPUs refused.
	if cpus > 1 {
		err = s.Resize(ctx, "sb1", store.Resources{MilliCPU: 500, MemoryBytes: 256 << 20})
		if !errdefs.IsFailedPrecondition(err) || !strings.Contains(err.Error(), "cannot change its vCPUs") {
			t.Errorf("fewer vCPUs: %v", err)
		}
		if r := record(); r.VMMemoryTarget != 256<<20 || r.Spec.Resources.MilliCPU == 500 {
			t.Errorf("after a refused CPU change: target %d, spec resources %+v", r.VMMemoryTarget, r.Spec.Resources)
		}
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

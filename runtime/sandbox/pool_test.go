package sandbox

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/macvz/macvz/runtime/shim/shimtest"
	"github.com/macvz/macvz/runtime/store"
	"github.com/macvz/macvz/vmimage/imagestore"
)

// poolSpec is a host-network pod that forwards no port: one a pooled VM
// can take without a pod network.
func poolSpec() *store.SandboxSpec {
	sp := testSpec()
	sp.Ports = nil
	return sp
}

// poolWithOne is a controller with warm_pool 1 whose pool holds a VM
// of img: sandbox sb1 booted it.
func poolWithOne(t *testing.T) (*Controller, *shimtest.Launcher, *imagestore.VMImage) {
	t.Helper()
	requireRoot(t)
	shims := shimtest.New()
	s, _ := newFakeController(t, t.TempDir(), shims, func(c *Config) { c.WarmPool = 1 })
	img := testImage(t, s)
	if _, err := s.Create(context.Background(), store.Sandbox{ID: "sb1", Name: "sb1", Spec: poolSpec()}, img); err != nil {
		t.Fatal(err)
	}
	waitPoolReady(t, s, 1)
	return s, shims, img
}

func waitPoolReady(t *testing.T, s *Controller, want int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		n := 0
		for _, c := range s.WarmStatus().PoolReady {
			n += c
		}
		if n == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("pooled VMs ready: %d, want %d (%+v)", n, want, s.WarmStatus())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestWarmPool: after a sandbox of an image boots, the pool restores a
// VM of it ahead of time (reseeded, shares mounted, one isolated process
// run); the next such sandbox takes it (its ID, directory and disk clone
// become the VM's; nothing new is spawned; its guest gets the sandbox's
// network, name and DNS but no second mount), and the pool refills.
// Closing discards what waits; a marked directory without a record is
// discarded by the next controller.
func TestWarmPool(t *testing.T) {
	requireRoot(t)
	ctx := context.Background()
	shims := shimtest.New()
	dir := t.TempDir()
	s, st := newFakeController(t, dir, shims, func(c *Config) { c.WarmPool = 1 })
	img := testImage(t, s)
	if _, err := s.Create(ctx, store.Sandbox{ID: "sb1", Name: "sb1", Spec: poolSpec()}, img); err != nil {
		t.Fatal(err)
	}
	waitPoolReady(t, s, 1)
	spawned := len(shims.Spawned())
	pooled := shims.LastSpawn()
	if pooled.Spec.RestoreFrom == "" || pooled.Spec.NICs[0].Kind != "user" {
		t.Fatalf("the pooled VM's spec: %+v", pooled.Spec)
	}
	g := shims.Running(pooled.Dir).Guest.Setup()
	if g.Reseeds != 1 || len(g.Mounts) != 2 || len(g.Ran) != 2 || g.Live != 0 || len(g.Network) != 0 || len(g.Hostnames) != 0 {
		t.Fatalf("the pooled VM's guest before a sandbox took it: %+v", g)
	}
	if w := g.Ran[0]; !w.GetOwnMountNamespace() || !w.GetRestrictCapabilities() || !w.GetSeccompRuntimeDefault() {
		t.Errorf("the warm-up process runs without a container's isolation: %v", w)
	}
	if e := g.Ran[1]; e.GetId().GetContainerId() != g.Ran[0].GetId().GetContainerId() || e.GetId().GetExecId() == "" || !e.GetRestrictCapabilities() {
		t.Errorf("the warm-up exec: %v", e)
	}
	if _, err := os.Stat(filepath.Join(pooled.Dir, poolMarkerFile)); err != nil {
		t.Errorf("the pooled VM's directory is not marked: %v", err)
	}

	sb2, err := s.Create(ctx, store.Sandbox{ID: "sb2", Name: "sb2", Spec: poolSpec()}, img)
	if err != nil {
		t.Fatal(err)
	}
	if sb2.Dir != pooled.Dir || sb2.ID != pooled.Spec.ID || sb2.VMBoot != BootPool || sb2.Disk != diskKey(sb2.ID) {
		t.Fatalf("the second sandbox: id %s dir %s boot %s disk %s; the pooled VM: %s %s", sb2.ID, sb2.Dir, sb2.VMBoot, sb2.Disk, pooled.Spec.ID, pooled.Dir)
	}
	if _, err := st.Sandbox("sb2"); err == nil {
		t.Error("a record under the ID the sandbox was asked with")
	}
	if _, err := os.Stat(filepath.Join(sb2.Dir, poolMarkerFile)); !os.IsNotExist(err) {
		t.Errorf("the taken VM's directory is still marked: %v", err)
	}
	g = shims.Running(sb2.Dir).Guest.Setup()
	if len(g.Mounts) != 2 || len(g.Hostnames) != 1 || g.Hostnames[0] != "web-1" || len(g.Network) != 1 || len(g.Resolv) != 1 {
		t.Errorf("the taken VM's guest setup: %+v", g)
	}
	if in := g.Network[0].GetInterfaces()[0]; in.GetMac() != sb2.Network.NIC.MAC || in.GetPreviousMac() == "" {
		t.Errorf("the taken guest's NIC: mac %s previous %s (sandbox's %s)", in.GetMac(), in.GetPreviousMac(), sb2.Network.NIC.MAC)
	}
	// Refilled: one more VM spawned after the take, none for the take.
	waitPoolReady(t, s, 1)
	if n := len(shims.Spawned()); n != spawned+1 {
		t.Errorf("%d shims spawned after the take, want 1 (the refill)", n-spawned)
	}
	refill := shims.LastSpawn().Dir

	// A sandbox with a port to forward is not a pooled VM's.
	sb3, err := s.Create(ctx, store.Sandbox{ID: "sb3", Name: "sb3", Spec: testSpec()}, img)
	if err != nil {
		t.Fatal(err)
	}
	if sb3.ID != "sb3" || sb3.VMBoot != BootWarm {
		t.Errorf("a sandbox with a port: id %s boot %s", sb3.ID, sb3.VMBoot)
	}

	// Closing discards what waits; the sandboxes keep their VMs.
	s.closePool()
	if shims.Running(refill) != nil {
		t.Error("the waiting pooled VM's shim runs on after the pool closed")
	}
	if _, err := os.Stat(refill); !os.IsNotExist(err) {
		t.Errorf("the waiting pooled VM's directory is left: %v", err)
	}
	if shims.Running(sb2.Dir) == nil {
		t.Error("closing the pool ended a sandbox's VM")
	}

	// A marked directory without a record (a daemon that died with a
	// pooled VM) goes when the next controller starts.
	left := filepath.Join(s.cfg.StateDir, "left-behind")
	os.MkdirAll(left, 0o700)
	b, _ := json.Marshal(poolMarker{})
	os.WriteFile(filepath.Join(left, poolMarkerFile), b, 0o600)
	s.sweepPool(ctx)
	if _, err := os.Stat(left); !os.IsNotExist(err) {
		t.Errorf("a pooled VM of an earlier daemon is left: %v", err)
	}
	if _, err := os.Stat(sb2.Dir); err != nil {
		t.Errorf("the sweep removed a sandbox's directory: %v", err)
	}
}

// A sandbox that took a pooled VM and then failed (its boot never ran)
// leaves nothing of it.
func TestWarmPoolClaimUndone(t *testing.T) {
	requireRoot(t)
	ctx := context.Background()
	shims := shimtest.New()
	s, _ := newFakeController(t, t.TempDir(), shims, func(c *Config) { c.WarmPool = 1; c.MaxLinuxVMs = 3 })
	img := testImage(t, s)
	sb1, err := s.Create(ctx, store.Sandbox{ID: "sb1", Name: "sb1", Spec: poolSpec()}, img)
	if err != nil {
		t.Fatal(err)
	}
	waitPoolReady(t, s, 1)
	pooled := shims.LastSpawn()
	// Taken, then removed before its boot.
	sb := store.Sandbox{ID: "sb2", Name: "sb2", Spec: poolSpec()}
	sb.Dir = s.Dir(sb.ID)
	s.claimPooled(&sb, img)
	if sb.ID != pooled.Spec.ID {
		t.Fatalf("no pooled VM taken")
	}
	if err := s.Remove(ctx, sb); err != nil {
		t.Fatal(err)
	}
	if shims.Running(pooled.Dir) != nil {
		t.Error("the taken VM's shim runs on")
	}
	if _, err := s.sn.Stat(ctx, diskKey(sb.ID)); err == nil {
		t.Error("the taken VM's disk clone is left")
	}
	if _, err := os.Stat(pooled.Dir); !os.IsNotExist(err) {
		t.Errorf("the taken VM's directory is left: %v", err)
	}

	// With max_linux_vms 3: sb1 and a pooled VM run. A sandbox that is
	// not a pooled VM's (it forwards a port) takes the third slot; the
	// pool then has no room to refill, and the next such sandbox gets
	// the pooled VM's slot (the pool gives way) instead of an error.
	waitPoolReady(t, s, 1)
	sb3, err := s.Create(ctx, store.Sandbox{ID: "sb3", Name: "sb3", Spec: testSpec()}, img)
	if err != nil {
		t.Fatal(err)
	}
	if sb3.ID != "sb3" {
		t.Fatalf("the sandbox with a port took a pooled VM")
	}
	sb4, err := s.Create(ctx, store.Sandbox{ID: "sb4", Name: "sb4", Spec: testSpec()}, img)
	if err != nil {
		t.Fatalf("a third sandbox under max_linux_vms 3 with a pooled VM waiting: %v", err)
	}
	if sb1.VMSlot == sb4.VMSlot || sb3.VMSlot == sb4.VMSlot {
		t.Errorf("slots: %d %d %d", sb1.VMSlot, sb3.VMSlot, sb4.VMSlot)
	}
	waitPoolReady(t, s, 0)
}

// A sandbox made without an image (its VM boots with its first
// container's) takes the pooled VM of the image booted last; its boot
// uses it when the image is that one, and discards it and boots as
// usual when it is another.
func TestWarmPoolGuess(t *testing.T) {
	ctx := context.Background()
	s, shims, img := poolWithOne(t)
	pooled := shims.LastSpawn()
	sb, err := s.Create(ctx, store.Sandbox{ID: "sb2", Name: "sb2", Spec: poolSpec()}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if sb.ID != pooled.Spec.ID || sb.VMStarted {
		t.Fatalf("an imageless sandbox: id %s (pooled %s), started %v", sb.ID, pooled.Spec.ID, sb.VMStarted)
	}
	if err := s.Boot(ctx, &sb, img, nil); err != nil {
		t.Fatal(err)
	}
	if sb.VMBoot != BootPool {
		t.Errorf("booted %s, want from the pool", sb.VMBoot)
	}

	// Another image: the guess is wrong.
	waitPoolReady(t, s, 1)
	pooled = shims.LastSpawn()
	other := *img
	other.Content, other.Image.Name = "sha256:other", "example.com/other:1"
	sb3, err := s.Create(ctx, store.Sandbox{ID: "sb3", Name: "sb3", Spec: poolSpec()}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if sb3.ID != pooled.Spec.ID {
		t.Fatalf("no guess: %s", sb3.ID)
	}
	if err := s.Boot(ctx, &sb3, &other, nil); err != nil {
		t.Fatal(err)
	}
	if sb3.VMBoot != BootCold || sb3.Dir != pooled.Dir || shims.Running(sb3.Dir) == nil {
		t.Errorf("after a wrong guess: boot %s dir %s (pooled %s)", sb3.VMBoot, sb3.Dir, pooled.Dir)
	}
	if sp := shims.Running(sb3.Dir).Spec; sp.RestoreFrom != "" || sp.NICs[0].MAC != sb3.Network.NIC.MAC {
		t.Errorf("the VM booted after a wrong guess: restore %q, MAC %s (sandbox's %s)", sp.RestoreFrom, sp.NICs[0].MAC, sb3.Network.NIC.MAC)
	}
	if _, err := os.Stat(filepath.Join(sb3.Dir, poolMarkerFile)); !os.IsNotExist(err) {
		t.Errorf("the marker outlived a wrong guess: %v", err)
	}
}

// A sandbox that took a pooled VM and is stopped before its first
// container starts gives the VM up at once.
func TestWarmPoolStopBeforeBoot(t *testing.T) {
	ctx := context.Background()
	s, shims, _ := poolWithOne(t)
	pooled := shims.LastSpawn()
	sb, err := s.Create(ctx, store.Sandbox{ID: "sb2", Name: "sb2", Spec: poolSpec()}, nil)
	if err != nil || sb.ID != pooled.Spec.ID {
		t.Fatalf("no pooled VM taken: %v", err)
	}
	if err := s.Stop(ctx, sb.ID); err != nil {
		t.Fatal(err)
	}
	if shims.Running(pooled.Dir) != nil {
		t.Error("the stopped sandbox's pooled VM runs on")
	}
	if _, err := s.sn.Stat(ctx, diskKey(sb.ID)); err == nil {
		t.Error("the stopped sandbox's pooled disk clone is left")
	}
	if err := s.Remove(ctx, sb); err != nil {
		t.Fatal(err)
	}
}

// A marker names only what the pooled VM of its directory made: another
// sandbox's disk or a device that is not the plugin's tap is never
// removed for it.
func TestReadPoolMarker(t *testing.T) {
	b, _ := json.Marshal(poolMarker{Disk: diskKey("other"), Tap: "eth0"})
	if m := readPoolMarker("mine", b); m.Disk != "" || m.Tap != "" {
		t.Errorf("foreign names kept: %+v", m)
	}
	b, _ = json.Marshal(poolMarker{Disk: diskKey("mine"), Tap: "mvz0123456789a"})
	if m := readPoolMarker("mine", b); m.Disk != diskKey("mine") || m.Tap != "mvz0123456789a" {
		t.Errorf("own names dropped: %+v", m)
	}
	if m := readPoolMarker("mine", []byte("{not json")); m != (poolMarker{}) {
		t.Errorf("garbage: %+v", m)
	}
}

// The pool holds VMs of the saved states that are kept: when a state
// goes (evicted, its image removed), its pooled VMs go at the pool's
// next look.
func TestWarmPoolPrunesGoneStates(t *testing.T) {
	s, shims, _ := poolWithOne(t)
	pooled := shims.LastSpawn()
	ents, _ := os.ReadDir(s.cfg.WarmDir)
	for _, e := range ents {
		if e.IsDir() && !strings.HasPrefix(e.Name(), ".") {
			s.warm.drop(context.Background(), e.Name(), "the test drops it")
		}
	}
	s.pokePool()
	waitPoolReady(t, s, 0)
	deadline := time.Now().Add(5 * time.Second)
	for shims.Running(pooled.Dir) != nil && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if shims.Running(pooled.Dir) != nil {
		t.Error("the pooled VM of a dropped state runs on")
	}
}

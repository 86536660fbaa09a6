package sandbox

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/containerd/errdefs"

	"github.com/macvz/macvz/runtime/shim/shimtest"
	"github.com/macvz/macvz/runtime/shimapi"
	"github.com/macvz/macvz/runtime/store"
	"github.com/macvz/macvz/runtime/vm"
	"github.com/macvz/macvz/vmimage"
	"github.com/macvz/macvz/vmimage/imagestore"
)

// The controller's life cycle against fake shims: what it asks of the
// shim and the guest agent, what it records, and that a failure leaves
// nothing behind. The share is a tmpfs, so these need root (as CI is).

func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		if os.Getenv("CI") == "true" {
			t.Fatal("CI runs the unit tests as root")
		}
		t.Skip("needs root (the sandbox share is a tmpfs mount): run as root")
	}
}

// testImage is a bootable image with a disk, committed as a base in the
// controller's snapshotter.
func testImage(t *testing.T, s *Controller) *imagestore.VMImage {
	t.Helper()
	ctx := context.Background()
	ms, err := s.sn.Prepare(ctx, "base-active", "")
	if err != nil {
		t.Fatal(err)
	}
	dir := ms[0].Source
	for _, f := range []string{"vmlinux", "disk.img"} {
		if err := os.WriteFile(filepath.Join(dir, f), []byte(f), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.sn.Commit(ctx, "base", "base-active"); err != nil {
		t.Fatal(err)
	}
	bd, err := s.sn.CommittedDir(ctx, "base")
	if err != nil {
		t.Fatal(err)
	}
	return &imagestore.VMImage{
		Image:      imagestore.Image{Name: "example.com/vm:1"},
		Descriptor: &vmimage.Descriptor{OS: "linux", Kernel: "vmlinux", KernelCmdline: "console=ttyS0", Disk: "disk.img", MinCPUs: 1},
		Content:    "sha256:content", Base: "base", BaseDir: bd,
	}
}

func testSpec() *store.SandboxSpec {
	return &store.SandboxSpec{
		Namespace: "ns", Name: "web", UID: "u1", Hostname: "web-1", HostNetwork: true,
		Ports:     []store.Port{{Protocol: "tcp", ContainerPort: 8080}},
		DNS:       &store.DNS{Servers: []string{"10.0.0.10"}, Searches: []string{"ns.svc"}},
		Sysctls:   map[string]string{"net.ipv4.ping_group_range": "0 1"},
		Resources: store.Resources{MilliCPU: 1500, MemoryBytes: 320 << 20},
	}
}

// createSandbox creates the sandbox id (named name) with testSpec from img
// (nil: a record with no VM) and fails the test if Create does.
func createSandbox(t *testing.T, s *Controller, id, name string, img *imagestore.VMImage) store.Sandbox {
	t.Helper()
	sb, err := s.Create(context.Background(), store.Sandbox{ID: id, Name: name, Spec: testSpec()}, img)
	if err != nil {
		t.Fatal(err)
	}
	return sb
}

func TestCreateBootsStopsRemoves(t *testing.T) {
	requireRoot(t)
	ctx := context.Background()
	shims := shimtest.New()
	s, st := newFakeController(t, t.TempDir(), shims)
	img := testImage(t, s)

	sb := createSandbox(t, s, "sb1", "web_ns_u1_0", img)
	if !sb.VMStarted || sb.Creating || sb.State != store.SandboxReady || sb.Dir != filepath.Join(s.cfg.StateDir, "sb1") {
		t.Fatalf("record after Create: %+v", sb)
	}
	if sb.VMBoot != BootCold || sb.VMBootedAt.IsZero() || time.Since(sb.VMBootedAt) > time.Minute {
		t.Errorf("boot recorded as %q at %v, want a cold boot just now", sb.VMBoot, sb.VMBootedAt)
	}
	// The VM the shim was asked for: sized by the spec, the image's
	// kernel in the sandbox's own disk clone, the share, a NAT NIC
	// forwarding the host-network pod's port, the QEMU settings.
	o := shims.LastSpawn()
	spec := o.Spec
	if o.Dir != sb.Dir || o.Backend != "qemu" || spec.CPUs != min(2, runtime.NumCPU()) || spec.MemoryBytes != 320<<20 {
		t.Errorf("spawn: dir %s backend %s, %d CPUs, %d bytes", o.Dir, o.Backend, spec.CPUs, spec.MemoryBytes)
	}
	clone, err := s.sn.CommittedDir(ctx, "base")
	if err != nil || sb.Disk != diskKey("sb1") || len(spec.Disks) != 1 || filepath.Dir(spec.Disks[0].Path) == clone || filepath.Base(spec.Disks[0].Path) != "disk.img" {
		t.Errorf("disk: record %q, spec %+v (base %s)", sb.Disk, spec.Disks, clone)
	}
	if spec.Boot.Kind != vm.BootLinux || spec.Boot.Cmdline != "console=ttyS0" || len(spec.Shares) != 2 || spec.Shares[0].Tag != sharedTag || spec.Shares[0].ReadOnly ||
		spec.Shares[1].Tag != sharedROTag || !spec.Shares[1].ReadOnly {
		t.Errorf("boot %+v shares %+v", spec.Boot, spec.Shares)
	}
	if len(spec.NICs) != 1 || spec.NICs[0].Kind != vm.NICUser || len(spec.NICs[0].Forwards) != 1 || spec.NICs[0].Forwards[0].HostPort != 8080 {
		t.Errorf("NICs %+v", spec.NICs)
	}
	// The guest got the spec's identity and the network's address.
	c := shims.Running(sb.Dir)
	a := c.Guest.Setup()
	if len(a.Hostnames) != 1 || a.Hostnames[0] != "web-1" || len(a.Resolv) != 1 || a.Resolv[0].GetNameservers()[0] != "10.0.0.10" ||
		len(a.Sysctls) != 1 || a.Sysctls[0]["net.ipv4.ping_group_range"] != "0 1" {
		t.Errorf("guest setup: hostname %v resolv %v sysctls %v", a.Hostnames, a.Resolv, a.Sysctls)
	}
	if len(a.Network) != 1 || len(a.Network[0].GetInterfaces()) != 1 || a.Network[0].GetInterfaces()[0].GetAddresses()[0] != userNetGuest {
		t.Errorf("guest network: %v", a.Network)
	}
	mounted := map[string]bool{}
	for _, m := range a.Mounts {
		if m.GetFstype() == "9p" && m.GetReadOnly() == (m.GetTag() == sharedROTag) {
			mounted[m.GetTag()] = true
		}
	}
	if len(a.Mounts) != 2 || !mounted[sharedTag] || !mounted[sharedROTag] {
		t.Errorf("guest mounts: %v", a.Mounts)
	}
	// The first cold boot saved the VM for warm starts, then resumed it.
	if n := c.Calls(); n.Saves != 1 || n.Resumes != 1 {
		t.Errorf("warm save: %+v", n)
	}

	// A container runs; Stop records its exit from the shim.
	if err := st.CreateContainer(&store.Container{ID: "c1", Name: "c1", SandboxID: "sb1", State: store.ContainerRunning}); err != nil {
		t.Fatal(err)
	}
	unlock := s.Lock("sb1")
	if err := s.Stop(ctx, "sb1"); err != nil {
		t.Fatal(err)
	}
	if err := s.Stop(ctx, "sb1"); err != nil {
		t.Fatalf("second Stop: %v", err)
	}
	unlock()
	if n := c.Calls(); n.Stops != 1 || n.Shutdowns != 1 || shims.Running(sb.Dir) != nil {
		t.Errorf("stop: %+v", n)
	}
	rec, _ := st.Sandbox("sb1")
	ctr, _ := st.Container("c1")
	if rec.State != store.SandboxNotReady || rec.VMStarted || rec.Network != nil || ctr.State != store.ContainerExited || ctr.ExitCode != 255 {
		t.Errorf("after Stop: sandbox %+v container %+v", rec, ctr)
	}

	unlock = s.Lock("sb1")
	err = s.Remove(ctx, rec)
	unlock()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := st.Sandbox("sb1"); !errdefs.IsNotFound(err) {
		t.Errorf("record after Remove: %v", err)
	}
	if _, err := st.Container("c1"); !errdefs.IsNotFound(err) {
		t.Errorf("container record after Remove: %v", err)
	}
	if _, err := os.Stat(sb.Dir); !os.IsNotExist(err) {
		t.Errorf("state directory after Remove: %v", err)
	}
	if _, err := s.sn.Stat(ctx, diskKey("sb1")); !errdefs.IsNotFound(err) {
		t.Errorf("disk clone after Remove: %v", err)
	}
}

// A second sandbox of the same VM restores the saved state, and its
// guest is told the MAC it had when saved.
// An image whose agent cannot reseed (from before Reseed) is never saved:
// its sandboxes boot cold, rather than fail a restore each time.
func TestNoWarmStateWithoutReseed(t *testing.T) {
	requireRoot(t)
	shims := shimtest.New()
	shims.OldAgents()
	s, _ := newFakeController(t, t.TempDir(), shims)
	img := testImage(t, s)
	createSandbox(t, s, "sb1", "sb1", img)
	createSandbox(t, s, "sb2", "sb2", img)
	if spec := shims.LastSpawn().Spec; spec.RestoreFrom != "" {
		t.Errorf("the second boot restored %q, a state that was not to be saved", spec.RestoreFrom)
	}
	states, _ := filepath.Glob(filepath.Join(s.cfg.WarmDir, "*", "state"))
	if len(states) != 0 {
		t.Errorf("saved states: %v", states)
	}
}

func TestCreateRestoresWarmState(t *testing.T) {
	requireRoot(t)
	shims := shimtest.New()
	s, _ := newFakeController(t, t.TempDir(), shims)
	img := testImage(t, s)
	first := createSandbox(t, s, "sb1", "sb1", img)
	if shims.LastSpawn().Spec.RestoreFrom != "" {
		t.Fatal("the first boot restored a state")
	}
	second := createSandbox(t, s, "sb2", "sb2", img)
	spec := shims.LastSpawn().Spec
	if spec.RestoreFrom == "" || !strings.HasPrefix(spec.RestoreFrom, s.cfg.WarmDir) {
		t.Fatalf("second boot: RestoreFrom %q", spec.RestoreFrom)
	}
	// The state was saved with its RAM file, which the restore maps.
	if c := shims.Running(first.Dir).Calls(); c.SavesRAMFile != 1 || spec.RestoreRAM != spec.RestoreFrom+vm.RAMFileSuffix {
		t.Errorf("saved %d times with a RAM file; the restore maps %q", c.SavesRAMFile, spec.RestoreRAM)
	}
	if first.VMBoot != BootCold || second.VMBoot != BootWarm {
		t.Errorf("boots recorded as %q and %q, want cold then warm", first.VMBoot, second.VMBoot)
	}
	if n := shims.Running(first.Dir).Guest.Setup().Reseeds; n != 1 {
		t.Errorf("the guest whose state was saved was reseeded %d times, want once (asked before the save)", n)
	}
	if n := shims.Running(second.Dir).Guest.Setup().Reseeds; n != 1 {
		t.Errorf("the restored guest was reseeded %d times, want once", n)
	}
	if n, m := shims.Running(first.Dir).Guest.Setup().ModuleWaits, shims.Running(second.Dir).Guest.Setup().ModuleWaits; n != 1 || m != 0 {
		t.Errorf("waits for the guest's modules: %d before the save, %d in the restored guest; want 1 and 0", n, m)
	}
	in := shims.Running(second.Dir).Guest.Setup().Network[0].GetInterfaces()[0]
	if in.GetMac() != second.Network.NIC.MAC || in.GetPreviousMac() != first.Network.NIC.MAC {
		t.Errorf("restored guest NIC: mac %s previous %s (sandboxes' %s, %s)", in.GetMac(), in.GetPreviousMac(), second.Network.NIC.MAC, first.Network.NIC.MAC)
	}
}

// A boot that fails leaves nothing: no record, no directory, no clone, no
// shim, and the error is the shim's.
func TestCreateFailureUndone(t *testing.T) {
	requireRoot(t)
	ctx := context.Background()
	shims := shimtest.New()
	s, st := newFakeController(t, t.TempDir(), shims)
	img := testImage(t, s)
	boom := errors.New("the VM did not boot")
	shims.FailNextStart(boom)
	_, err := s.Create(ctx, store.Sandbox{ID: "sb1", Name: "sb1", Spec: testSpec()}, img)
	if !errors.Is(err, boom) {
		t.Fatalf("Create: %v, want the boot's error", err)
	}
	if _, err := st.Sandbox("sb1"); !errdefs.IsNotFound(err) {
		t.Errorf("record left: %v", err)
	}
	if _, err := os.Stat(s.Dir("sb1")); !os.IsNotExist(err) {
		t.Errorf("state directory left: %v", err)
	}
	if _, err := s.sn.Stat(ctx, diskKey("sb1")); !errdefs.IsNotFound(err) {
		t.Errorf("disk clone left: %v", err)
	}
	if shims.Running(s.Dir("sb1")) != nil || s.connectedShim("sb1") != nil {
		t.Error("shim left")
	}
	// Without a spec nothing is made at all.
	if _, err := s.Create(ctx, store.Sandbox{ID: "sb2"}, nil); !errdefs.IsInvalidArgument(err) {
		t.Errorf("Create without a spec: %v", err)
	}
}

// At start a new controller re-attaches to shims that still run, marks
// sandboxes whose shim is gone NotReady with a reason, and removes a
// sandbox whose creation the previous daemon's end interrupted.
func TestReconcile(t *testing.T) {
	requireRoot(t)
	ctx := context.Background()
	dir := t.TempDir()
	shims := shimtest.New()
	s, st := newFakeController(t, dir, shims)
	img := testImage(t, s)
	alive := createSandbox(t, s, "alive", "alive", img)
	gone := createSandbox(t, s, "gone", "gone", img)
	half := createSandbox(t, s, "half", "half", nil)
	if _, err := st.UpdateSandbox(half.ID, func(r *store.Sandbox) error { r.Creating = true; return nil }); err != nil {
		t.Fatal(err)
	}
	// The daemon ends; one shim dies while it is away.
	s.Close()
	st.Close()
	s.sn.Close()
	shims.Kill(ctx, gone.Dir)

	s2, st2 := newFakeController(t, dir, shims)
	if s2.connectedShim(alive.ID) == nil {
		t.Error("not re-attached to the running shim")
	}
	if r, _ := st2.Sandbox(alive.ID); r.State != store.SandboxReady {
		t.Errorf("running sandbox: %+v", r)
	}
	if r, _ := st2.Sandbox(gone.ID); r.State != store.SandboxNotReady || !strings.Contains(r.Reason, "shim exited while macvz was not running") {
		t.Errorf("sandbox whose shim died: state %s reason %q", r.State, r.Reason)
	}
	if _, err := st2.Sandbox(half.ID); !errdefs.IsNotFound(err) {
		t.Errorf("half-made sandbox: %v", err)
	}
}

// A VM that stops by itself makes its sandbox NotReady with the VM's
// reason, and its running containers Exited with what the shim recorded.
func TestRefreshSeesVMStop(t *testing.T) {
	requireRoot(t)
	ctx := context.Background()
	shims := shimtest.New()
	s, st := newFakeController(t, t.TempDir(), shims)
	sb := createSandbox(t, s, "sb1", "sb1", testImage(t, s))
	for _, id := range []string{"c1", "c2"} {
		if err := st.CreateContainer(&store.Container{ID: id, Name: id, SandboxID: sb.ID, State: store.ContainerRunning}); err != nil {
			t.Fatal(err)
		}
	}
	c := shims.Running(sb.Dir)
	c.SetExit("c1", &shimapi.ProcessExit{ExitCode: 3, Reason: "Error"})
	c.StopVM("guest panic")
	sb = s.Refresh(ctx, sb)
	if sb.State != store.SandboxNotReady || sb.Reason != "the VM stopped: guest panic" {
		t.Errorf("sandbox: %s %q", sb.State, sb.Reason)
	}
	c1, _ := st.Container("c1")
	c2, _ := st.Container("c2")
	if c1.State != store.ContainerExited || c1.ExitCode != 3 || c2.State != store.ContainerExited || c2.ExitCode != 255 || c2.Message != "the VM stopped: guest panic" {
		t.Errorf("containers: %+v / %+v", c1, c2)
	}
	if n := c.Calls(); n.Shutdowns != 1 || s.connectedShim(sb.ID) != nil {
		t.Errorf("shim of a stopped VM: %+v", n)
	}
}

// TestArm64BootsCold: QEMU cannot restore an arm64 guest, so its boots
// save no state (a save pauses the VM and drops its agent connection
// for nothing) and every one is cold.
func TestArm64BootsCold(t *testing.T) {
	requireRoot(t)
	shims := shimtest.New()
	s, _ := newFakeController(t, t.TempDir(), shims)
	img := testImage(t, s)
	img.Descriptor.Arch = "arm64"
	for _, id := range []string{"sb1", "sb2"} {
		sb := createSandbox(t, s, id, "web_ns_"+id, img)
		if o := shims.LastSpawn(); o.Spec.Arch != "arm64" || o.Spec.RestoreFrom != "" {
			t.Errorf("%s: spec arch %q restoreFrom %q", id, o.Spec.Arch, o.Spec.RestoreFrom)
		}
		if n := shims.Running(sb.Dir).Calls(); n.Saves != 0 || n.Resumes != 0 {
			t.Errorf("%s: %+v", id, n)
		}
	}
	if ents, _ := os.ReadDir(s.cfg.WarmDir); len(ents) != 0 {
		t.Errorf("warm dir: %v", ents)
	}
}

package sandbox

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"

	"github.com/macvz/macvz/runtime/store"
	"github.com/macvz/macvz/runtime/vm"
	"github.com/macvz/macvz/snapshotter"
	"github.com/macvz/macvz/vmimage"
	"github.com/macvz/macvz/vmimage/imagestore"
)

func TestWarmKey(t *testing.T) {
	spec := func() *vm.Spec {
		return &vm.Spec{ID: "a", Dir: "/state/a", CPUs: 1, MemoryBytes: 512 << 20,
			Boot:   vm.Boot{Kind: vm.BootLinux, Kernel: "/snap/1/vmlinux"},
			Shares: []vm.Share{{Tag: sharedTag, HostPath: "/state/a/shared"}},
			NICs:   []vm.NIC{{Kind: vm.NICTap, Device: "mvz1", MAC: "02:00:00:00:00:01"}},
			QEMU:   vm.QEMUOptions{Accel: "tcg"}}
	}
	base := warmKey("qemu", "sha256:c", spec(), 0)
	// Paths, IDs, the NIC's backend and MAC differ per sandbox: same VM.
	other := spec()
	other.ID, other.Dir, other.Boot.Kernel = "b", "/state/b", "/snap/2/vmlinux"
	other.Shares[0].HostPath = "/state/b/shared"
	other.NICs[0] = vm.NIC{Kind: vm.NICUser, MAC: "02:00:00:00:00:02"}
	if k := warmKey("qemu", "sha256:c", other, 0); k != base {
		t.Errorf("same VM, another sandbox: key %s, want %s", k, base)
	}
	for name, change := range map[string]func(*vm.Spec){
		"cpus":    func(s *vm.Spec) { s.CPUs = 2 },
		"memory":  func(s *vm.Spec) { s.MemoryBytes = 256 << 20 },
		"no NIC":  func(s *vm.Spec) { s.NICs = nil },
		"qemu":    func(s *vm.Spec) { s.QEMU.Accel = "kvm" },
		"share":   func(s *vm.Spec) { s.Shares[0].ReadOnly = true },
		"disk":    func(s *vm.Spec) { s.Disks = []vm.Disk{{Path: "/d"}} },
		"cmdline": func(s *vm.Spec) { s.Boot.Cmdline = "quiet macvz.hostile=garbage" },
	} {
		s := spec()
		change(s)
		if warmKey("qemu", "sha256:c", s, 0) == base {
			t.Errorf("%s changed, key did not", name)
		}
	}
	if warmKey("qemu", "sha256:other", spec(), 0) == base {
		t.Error("another image, same key")
	}
	if warmKey("vz", "sha256:c", spec(), 0) == base {
		t.Error("another backend, same key")
	}
}

// newTestWarmStore is a warm store on a real snapshotter with one
// committed base holding a disk file.
func newTestWarmStore(t *testing.T, max int) (*warmStore, *snapshotter.Snapshotter) {
	t.Helper()
	root := t.TempDir()
	sn, err := snapshotter.New(filepath.Join(root, "snapshots"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sn.Close() })
	ctx := context.Background()
	ms, err := sn.Prepare(ctx, "base-active", "")
	if err != nil {
		t.Fatal(err)
	}
	dir, _ := snapshotter.Dir(ms)
	os.WriteFile(filepath.Join(dir, "disk.img"), []byte("base disk"), 0o644)
	if err := sn.Commit(ctx, "base", "base-active"); err != nil {
		t.Fatal(err)
	}
	return newWarmStore(filepath.Join(root, "warm"), max, sn), sn
}

// saveTestState saves a state for key the way saveWarm does.
func saveTestState(t *testing.T, w *warmStore, key string, manifest digest.Digest, diskDir string) {
	t.Helper()
	ctx := context.Background()
	if !w.begin(key) {
		t.Fatalf("begin(%s) refused", key)
	}
	defer w.end(key)
	tmp, err := w.tempDir()
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(tmp, "state"), []byte("state of "+key), 0o600)
	meta := warmMeta{Image: "img", Manifest: manifest, MAC: "02:00:00:00:00:01", Created: time.Now()}
	if diskDir != "" {
		if meta.Disk, err = w.saveDisk(ctx, key, "base", diskDir, []string{"disk.img"}); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.commit(ctx, key, tmp, meta); err != nil {
		t.Fatal(err)
	}
}

func TestWarmStore(t *testing.T) {
	ctx := context.Background()
	w, sn := newTestWarmStore(t, 2)
	if w.lookup("k1") != nil {
		t.Fatal("lookup of nothing")
	}

	// A sandbox's clone whose disk changed since the base.
	ms, err := sn.Prepare(ctx, "sandbox-1", "base")
	if err != nil {
		t.Fatal(err)
	}
	sbDir, _ := snapshotter.Dir(ms)
	os.WriteFile(filepath.Join(sbDir, "disk.img"), []byte("disk at save time"), 0o644)
	saveTestState(t, w, "k1", "sha256:m1", sbDir)
	if w.begin("k1") {
		t.Error("begin of a saved key")
	}
	ws := w.lookup("k1")
	if ws == nil || ws.meta.MAC != "02:00:00:00:00:01" || ws.meta.Disk != warmSnapshotPrefix+"k1" {
		t.Fatalf("lookup: %+v", ws)
	}
	if b, _ := os.ReadFile(ws.stateFile()); string(b) != "state of k1" {
		t.Errorf("state: %q", b)
	}
	// The sandbox goes on writing; the saved disk keeps the moment.
	os.WriteFile(filepath.Join(sbDir, "disk.img"), []byte("later"), 0o644)
	ms, err = sn.Prepare(ctx, "sandbox-2", ws.meta.Disk)
	if err != nil {
		t.Fatal(err)
	}
	d2, _ := snapshotter.Dir(ms)
	if b, _ := os.ReadFile(filepath.Join(d2, "disk.img")); string(b) != "disk at save time" {
		t.Errorf("a warm sandbox's disk: %q", b)
	}

	// Eviction: the least recently used beyond max go.
	saveTestState(t, w, "k2", "sha256:m2", "")
	time.Sleep(10 * time.Millisecond)
	w.lookup("k1") // used: k2 is now the oldest
	time.Sleep(10 * time.Millisecond)
	saveTestState(t, w, "k3", "sha256:m2", "")
	if w.lookup("k2") != nil || w.lookup("k1") == nil || w.lookup("k3") == nil {
		t.Errorf("after eviction: k1 %v k2 %v k3 %v", w.lookup("k1") != nil, w.lookup("k2") != nil, w.lookup("k3") != nil)
	}

	// Dropping k1 while sandbox-2 was cloned from its disk: the state
	// goes at once, the disk snapshot once the clone is gone.
	w.dropImage(ctx, "sha256:m1")
	if w.lookup("k1") != nil {
		t.Error("k1 still there after its image was dropped")
	}
	if _, err := sn.Stat(ctx, warmSnapshotPrefix+"k1"); err != nil {
		t.Errorf("the disk snapshot went while a clone depends on it: %v", err)
	}
	if err := sn.Remove(ctx, "sandbox-2"); err != nil {
		t.Fatal(err)
	}
	w.sweep(ctx)
	if _, err := sn.Stat(ctx, warmSnapshotPrefix+"k1"); err == nil {
		t.Error("the disk snapshot of a dropped state survived a sweep")
	}
	ents, _ := os.ReadDir(w.dir)
	for _, e := range ents {
		if e.Name() != "k3" {
			t.Errorf("left in the warm dir: %s", e.Name())
		}
	}
}

// macOS guests keep one saved state per VM slot, each with its slot's
// MAC; Linux guests share one per VM shape and keep their own MACs.
func TestWarmPlan(t *testing.T) {
	s := newTestController(t)
	if s.warm == nil {
		t.Fatal("warm start is on by default")
	}
	mac := &imagestore.VMImage{Content: "sha256:mac", Descriptor: &vmimage.Descriptor{Kind: vmimage.KindTart, OS: "darwin", Arch: "arm64",
		Disk: vmimage.DiskFile, NVRAM: vmimage.NVRAMFile, HardwareModel: []byte("hw")}}
	lin := &imagestore.VMImage{Content: "sha256:lin", Descriptor: &vmimage.Descriptor{OS: "linux", Kernel: "vmlinux"}}
	nat := &store.Network{NIC: vm.NIC{Kind: vm.NICVmnetNAT, MAC: "02:00:00:00:00:aa"}}
	sb := func(n *store.Network) *store.Sandbox {
		return &store.Sandbox{ID: "sb", Dir: t.TempDir(), Network: n}
	}
	plan := func(sb *store.Sandbox, img *imagestore.VMImage, slot int) (string, string) {
		t.Helper()
		key, m, err := s.warmPlan(sb, &vmBoot{img: img, cpus: 4, mem: 8 << 30, slot: slot})
		if err != nil {
			t.Fatal(err)
		}
		return key, m
	}
	k1, m1 := plan(sb(nat), mac, 1)
	k2, m2 := plan(sb(nat), mac, 2)
	k1b, m1b := plan(sb(nat), mac, 1)
	if k1 == "" || k1 == k2 || k1 != k1b {
		t.Errorf("macOS keys: slot 1 %q, slot 2 %q, slot 1 again %q", k1, k2, k1b)
	}
	if m1 == "" || m1 == m2 || m1 != m1b || m1 == nat.NIC.MAC {
		t.Errorf("slot MACs: %q %q %q", m1, m2, m1b)
	}
	if hw, err := net.ParseMAC(m1); err != nil || hw[0]&2 == 0 || hw[0]&1 != 0 {
		t.Errorf("slot MAC %q is not a locally administered unicast address: %v", m1, err)
	}
	// The MACs are this host's: another host (another seed) has others.
	s2 := newTestController(t)
	if _, o1, _ := s2.warmPlan(sb(nat), &vmBoot{img: mac, cpus: 4, mem: 8 << 30, slot: 1}); o1 == m1 {
		t.Errorf("two hosts share slot MAC %s", o1)
	}
	// A tap attachment cannot take the slot's MAC: no warm start.
	if k, m := plan(sb(&store.Network{NIC: vm.NIC{Kind: vm.NICTap, Device: "tap0", MAC: "02:00:00:00:00:bb"}}), mac, 1); k != "" || m != "" {
		t.Errorf("macOS on a tap: %q %q", k, m)
	}
	// Linux: the slot does not matter, the MAC is the attachment's.
	tap := &store.Network{NIC: vm.NIC{Kind: vm.NICTap, Device: "tap0", MAC: "02:00:00:00:00:bb"}}
	l1, lm1 := plan(sb(tap), lin, 1)
	l2, lm2 := plan(sb(tap), lin, 2)
	if l1 == "" || l1 != l2 || lm1 != "" || lm2 != "" {
		t.Errorf("linux: %q %q %q %q", l1, l2, lm1, lm2)
	}
}

// TestWarmPlanColdOnly: a VM its backend cannot restore (QEMU's arm64
// guests) gets no warm key, so its state is never saved; the image is
// noted once.
func TestWarmPlanColdOnly(t *testing.T) {
	s := newTestController(t)
	arm := &imagestore.VMImage{Content: "sha256:arm", Descriptor: &vmimage.Descriptor{OS: "linux", Arch: "arm64", Kernel: "Image"}}
	amd := &imagestore.VMImage{Content: "sha256:amd", Descriptor: &vmimage.Descriptor{OS: "linux", Arch: "amd64", Kernel: "vmlinux"}}
	sb := &store.Sandbox{ID: "sb", Dir: t.TempDir()}
	for range 2 {
		key, mac, err := s.warmPlan(sb, &vmBoot{img: arm, cpus: 1, mem: 512 << 20})
		if err != nil || key != "" || mac != "" {
			t.Errorf("arm64 guest: key %q mac %q err %v", key, mac, err)
		}
	}
	if key, _, err := s.warmPlan(sb, &vmBoot{img: amd, cpus: 1, mem: 512 << 20}); err != nil || key == "" {
		t.Errorf("amd64 guest: key %q err %v", key, err)
	}
	st := s.WarmStatus()
	if !st.Enabled || st.Host != "" || len(st.ColdImages) != 1 || st.ColdImages[arm.Image.Name] == "" {
		t.Errorf("warm status: %+v", st)
	}
}

type fakeSaver struct {
	saved, resumed     int
	saveErr, resumeErr error
}

func (f *fakeSaver) SaveRAMFile(ctx context.Context, path string) error {
	f.saved++
	if f.saveErr != nil {
		return f.saveErr
	}
	return os.WriteFile(path, []byte("vm state"), 0o600)
}

func (f *fakeSaver) Resume(ctx context.Context) error { f.resumed++; return f.resumeErr }

// TestSaveWarmFails: a failed save costs the warm start only, and the
// VM is resumed; a VM that cannot resume after it fails the boot.
func TestSaveWarmFails(t *testing.T) {
	ctx := context.Background()
	s := newTestController(t)
	img := &imagestore.VMImage{Descriptor: &vmimage.Descriptor{OS: "linux"}}
	spec := &vm.Spec{ID: "sb", Boot: vm.Boot{Kind: vm.BootLinux}}
	f := &fakeSaver{saveErr: errors.New("migration failed")}
	if err := s.saveWarm(ctx, f, "k", spec, img, "", ""); err != nil {
		t.Fatal(err)
	}
	if f.saved != 1 || f.resumed != 1 || s.warm.lookup("k") != nil {
		t.Errorf("saved %d resumed %d, state %v", f.saved, f.resumed, s.warm.lookup("k"))
	}
	f.resumeErr = errors.New("paused for good")
	if err := s.saveWarm(ctx, f, "k", spec, img, "", ""); err == nil || !strings.Contains(err.Error(), "paused for good") {
		t.Errorf("save and resume failed: %v", err)
	}
}

// TestSaveWarmUnsavable: a save the backend refuses for good (the
// host's release, the VM's configuration: NotImplemented) is not tried
// again for that key, and crictl info says why the image boots cold.
func TestSaveWarmUnsavable(t *testing.T) {
	ctx := context.Background()
	s := newTestController(t)
	img := &imagestore.VMImage{Descriptor: &vmimage.Descriptor{OS: "linux"}}
	img.Image.Name = "example.com/vm:1"
	spec := &vm.Spec{ID: "sb", Boot: vm.Boot{Kind: vm.BootLinux}}
	f := &fakeSaver{saveErr: fmt.Errorf("the framework cannot save a VM with a serial port: %w", errdefs.ErrNotImplemented)}
	if err := s.saveWarm(ctx, f, "k", spec, img, "", ""); err != nil {
		t.Fatal(err)
	}
	if f.resumed != 1 || !s.warm.isUnsavable("k") || s.warm.isUnsavable("other") {
		t.Errorf("resumed %d, unsavable %v", f.resumed, s.warm.isUnsavable("k"))
	}
	if st := s.WarmStatus(); !strings.Contains(st.ColdImages["example.com/vm:1"], "serial port") {
		t.Errorf("warm status: %+v", st)
	}
	// Any other failure may pass: the key is tried again.
	f.saveErr = errors.New("disk full")
	if err := s.saveWarm(ctx, f, "k2", spec, img, "", ""); err != nil || s.warm.isUnsavable("k2") {
		t.Errorf("a transient failure: %v, unsavable %v", err, s.warm.isUnsavable("k2"))
	}
}

// A macOS guest's state is kept with the machine identifier the backend
// made for it, or not saved at all: a restore needs that identity.
func TestSaveWarmMacOS(t *testing.T) {
	ctx := context.Background()
	s := newTestController(t)
	img := &imagestore.VMImage{Descriptor: &vmimage.Descriptor{OS: "darwin"}}
	dir := t.TempDir()
	spec := &vm.Spec{ID: "sb", Boot: vm.Boot{Kind: vm.BootMacOS, MachineIDFile: filepath.Join(dir, "machine-id")},
		NICs: []vm.NIC{{Kind: vm.NICVmnetNAT, MAC: "02:11:22:33:44:55"}}}

	f := &fakeSaver{}
	if err := s.saveWarm(ctx, f, "k-noid", spec, img, "", ""); err != nil {
		t.Fatal(err)
	}
	if f.saved != 0 || s.warm.lookup("k-noid") != nil {
		t.Errorf("saved without a machine identifier (saves %d)", f.saved)
	}

	os.WriteFile(spec.Boot.MachineIDFile, []byte("fresh id"), 0o600)
	if err := s.saveWarm(ctx, f, "k-mac", spec, img, "", ""); err != nil {
		t.Fatal(err)
	}
	ws := s.warm.lookup("k-mac")
	if f.saved != 1 || f.resumed != 1 || ws == nil || string(ws.meta.MachineID) != "fresh id" || ws.meta.MAC != "02:11:22:33:44:55" {
		t.Fatalf("saved %d resumed %d state %+v", f.saved, f.resumed, ws)
	}
	// The image's identifier (vz.machine_identifier = "image") is kept too.
	spec.Boot.MachineID, spec.Boot.MachineIDFile = []byte("image id"), ""
	if err := s.saveWarm(ctx, f, "k-image", spec, img, "", ""); err != nil {
		t.Fatal(err)
	}
	if ws := s.warm.lookup("k-image"); ws == nil || string(ws.meta.MachineID) != "image id" {
		t.Errorf("image identifier: %+v", ws)
	}
}

package sandbox

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"

	"github.com/macvz/macvz/runtime/shim"
	"github.com/macvz/macvz/runtime/shim/shimtest"
	"github.com/macvz/macvz/runtime/store"
	"github.com/macvz/macvz/runtime/vm"
)

// TestCheckpointRestore: a checkpoint stops the processes, saves the VM
// with its disk and resumes everything, also when the save fails (then
// nothing is left in the directory); a tampered checkpoint is refused;
// a restore resumes the VM from a copy of the checkpoint with the new
// pod's identity and its containers Created and marked restored.
func TestCheckpointRestore(t *testing.T) {
	requireRoot(t)
	ctx := context.Background()
	shims := shimtest.New()
	s, st := newFakeController(t, t.TempDir(), shims)
	img := testImage(t, s)
	img.Image.Manifest.Digest = digest.FromString("manifest")
	img.Image.Config.Digest = digest.FromString("config")
	sb := createSandbox(t, s, "sb1", "web_ns_u1_0", img)
	b, _ := json.Marshal(shims.LastSpawn().Spec)
	os.WriteFile(filepath.Join(sb.Dir, shim.SpecFile), b, 0o600) // as the real launcher does
	ctr := store.Container{ID: strings.Repeat("ab", 32), SandboxID: sb.ID, Name: "c_web", Config: []byte{1}, ImageID: "img", State: store.ContainerRunning}
	if err := st.CreateContainer(&ctr); err != nil {
		t.Fatal(err)
	}
	c := shims.Running(sb.Dir)
	out := t.TempDir()

	if err := s.Checkpoint(ctx, sb, img, []store.Container{ctr}, filepath.Join(out, "missing")); !errdefs.IsNotFound(err) {
		t.Errorf("missing directory: %v", err)
	}
	os.WriteFile(filepath.Join(out, "user"), nil, 0o600)
	if err := s.Checkpoint(ctx, sb, img, []store.Container{ctr}, out); !errdefs.IsFailedPrecondition(err) {
		t.Errorf("non-empty directory: %v", err)
	}
	os.Remove(filepath.Join(out, "user"))

	// A save that fails: the VM runs on, the processes continue, the
	// shares are back, the directory is as it was.
	c.FailSave(errors.New("migration failed"))
	if err := s.Checkpoint(ctx, sb, img, []store.Container{ctr}, out); err == nil {
		t.Fatal("a failed save succeeded")
	}
	if ents, _ := os.ReadDir(out); len(ents) != 0 || c.Paused() {
		t.Errorf("after a failed save: files %v, paused %v", ents, c.Paused())
	}
	g := c.Guest.Setup()
	stop, cont := ctr.ID+" "+itoa(int(syscall.SIGSTOP)), ctr.ID+" "+itoa(int(syscall.SIGCONT))
	if !slices.Equal(g.Signals, []string{stop, cont}) || !slices.Equal(g.Unmounts, []string{sharedTag, sharedROTag}) || len(g.Mounts) != 4 {
		t.Errorf("guest after a failed save: signals %v unmounts %v mounts %d", g.Signals, g.Unmounts, len(g.Mounts))
	}
	c.FailSave(nil)

	// The caller gives up while the state is saved: the save ends (a
	// VM cannot be resumed mid-save), then everything is undone as for
	// a failed save.
	cctx, cancel := context.WithCancel(ctx)
	c.OnSave(cancel)
	if err := s.Checkpoint(cctx, sb, img, []store.Container{ctr}, out); !errors.Is(err, context.Canceled) {
		t.Errorf("a checkpoint whose caller gave up: %v, want context.Canceled", err)
	}
	c.OnSave(nil)
	if ents, _ := os.ReadDir(out); len(ents) != 0 || c.Paused() {
		t.Errorf("after a checkpoint whose caller gave up: files %v, paused %v", ents, c.Paused())
	}
	g = c.Guest.Setup()
	if n := len(g.Signals); n != 4 || g.Signals[n-1] != cont || len(g.Mounts) != 6 {
		t.Errorf("guest after a checkpoint whose caller gave up: signals %v mounts %d", g.Signals, len(g.Mounts))
	}

	if err := s.Checkpoint(ctx, sb, img, []store.Container{ctr}, out); err != nil {
		t.Fatal(err)
	}
	if c.Paused() {
		t.Error("the VM is left paused")
	}
	for _, f := range []string{CheckpointManifestFile, "state", "disk/disk.img"} {
		if _, err := os.Lstat(filepath.Join(out, f)); err != nil {
			t.Error(err)
		}
	}
	cp, err := s.ReadCheckpoint(out)
	if err != nil {
		t.Fatal(err)
	}
	if m := cp.Manifest; m.Backend != "qemu" || m.CPUs == 0 || len(m.Containers) != 1 || m.Containers[0].ID != ctr.ID || len(m.Disks) != 1 {
		t.Errorf("manifest %+v", m)
	}

	// Tampered copies of the manifest.
	mb, _ := os.ReadFile(filepath.Join(out, CheckpointManifestFile))
	for name, tc := range map[string]struct {
		edit func(m *CheckpointManifest)
		is   func(error) bool
	}{
		"backend":  {func(m *CheckpointManifest) { m.Backend = "vz" }, errdefs.IsFailedPrecondition},
		"version":  {func(m *CheckpointManifest) { m.Version = 2 }, errdefs.IsFailedPrecondition},
		"diskpath": {func(m *CheckpointManifest) { m.Disks[0].Name = "../../etc/passwd" }, errdefs.IsInvalidArgument},
		"state":    {func(m *CheckpointManifest) { m.State.Name = "/etc/shadow" }, errdefs.IsInvalidArgument},
		"size":     {func(m *CheckpointManifest) { m.State.Size++ }, errdefs.IsInvalidArgument},
	} {
		var m CheckpointManifest
		json.Unmarshal(mb, &m)
		tc.edit(&m)
		d := t.TempDir()
		b, _ := json.Marshal(m)
		os.WriteFile(filepath.Join(d, CheckpointManifestFile), b, 0o600)
		os.Link(filepath.Join(out, "state"), filepath.Join(d, "state"))
		os.Mkdir(filepath.Join(d, "disk"), 0o700)
		os.Link(filepath.Join(out, "disk", "disk.img"), filepath.Join(d, "disk", "disk.img"))
		if _, err := s.ReadCheckpoint(d); !tc.is(err) {
			t.Errorf("%s: %v", name, err)
		}
	}
	// A symlink in place of the state is not followed.
	d := t.TempDir()
	os.WriteFile(filepath.Join(d, CheckpointManifestFile), mb, 0o600)
	os.Symlink(filepath.Join(out, "state"), filepath.Join(d, "state"))
	if _, err := s.ReadCheckpoint(d); !errdefs.IsInvalidArgument(err) {
		t.Errorf("symlinked state: %v", err)
	}

	// Restore while the original exists: its containers' IDs are taken.
	nsb := store.Sandbox{ID: "sb2", Name: "web2_ns_u2_0", Spec: &store.SandboxSpec{Hostname: "web-2", HostNetwork: true}}
	rc := ctr
	rc.State = ""
	if _, err := s.Restore(ctx, nsb, cp, img, []store.Container{rc}); !errdefs.IsFailedPrecondition(err) {
		t.Errorf("restore beside the original: %v", err)
	}
	if _, err := st.Sandbox("sb2"); !errdefs.IsNotFound(err) {
		t.Errorf("a refused restore left a record: %v", err)
	}
	if err := s.Remove(ctx, sb); err != nil {
		t.Fatal(err)
	}
	r, err := s.Restore(ctx, nsb, cp, img, []store.Container{rc})
	if err != nil {
		t.Fatal(err)
	}
	got, err := st.Container(ctr.ID)
	if err != nil || got.SandboxID != "sb2" || got.State != store.ContainerCreated || !got.Restored || r.Restore == nil || r.VMStarted {
		t.Fatalf("restored: %+v %+v %v", r, got, err)
	}
	// A RAM file beside a checkpoint's state is never mapped: a
	// checkpoint is one stream, and its directory came from outside.
	if err := os.WriteFile(filepath.Join(r.Dir, "checkpoint", "state"+vm.RAMFileSuffix), []byte("not RAM"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := s.Boot(ctx, &r, img, nil); err != nil {
		t.Fatal(err)
	}
	spec := shims.LastSpawn().Spec
	if spec.RestoreFrom != filepath.Join(r.Dir, "checkpoint", "state") || !spec.Savable || r.Restore != nil || spec.RestoreRAM != "" {
		t.Errorf("restored VM: restore from %q (RAM file %q), savable %v, record %+v", spec.RestoreFrom, spec.RestoreRAM, spec.Savable, r.Restore)
	}
	if n := shims.Running(r.Dir).Guest.Setup().Reseeds; n != 1 {
		t.Errorf("the resumed guest was reseeded %d times, want once", n)
	}
	if h := shims.Running(r.Dir).Guest.Setup().Hostnames; !slices.Equal(h, []string{"web-2"}) {
		t.Errorf("restored guest's hostname: %v", h)
	}
	if _, err := os.Stat(filepath.Join(r.Dir, "checkpoint")); !os.IsNotExist(err) {
		t.Errorf("the checkpoint's copy stays after the VM resumed: %v", err)
	}
	if _, err := os.Stat(filepath.Join(out, CheckpointManifestFile)); err != nil {
		t.Errorf("the checkpoint itself changed: %v", err)
	}
}

func itoa(i int) string { return strconv.Itoa(i) }

// TestCloneFromRoot: a checkpoint's file is cloned from what was opened
// inside the directory: a name that became a symlink (to a host file) is
// refused, as is a file of another size.
func TestCloneFromRoot(t *testing.T) {
	dir, out := t.TempDir(), t.TempDir()
	os.WriteFile(filepath.Join(dir, "state"), []byte("vm state"), 0o600)
	secret := filepath.Join(t.TempDir(), "secret")
	os.WriteFile(secret, []byte("host data"), 0o600)
	os.Symlink(secret, filepath.Join(dir, "link"))
	root, err := os.OpenRoot(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer root.Close()
	if err := cloneFromRoot(root, "state", filepath.Join(out, "state"), 8); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(filepath.Join(out, "state")); string(b) != "vm state" {
		t.Errorf("cloned %q", b)
	}
	if err := cloneFromRoot(root, "link", filepath.Join(out, "link"), 9); !errdefs.IsInvalidArgument(err) {
		t.Errorf("a symlink: %v", err)
	}
	if err := cloneFromRoot(root, "state", filepath.Join(out, "other"), 99); !errdefs.IsInvalidArgument(err) {
		t.Errorf("another size: %v", err)
	}
	if _, err := os.Lstat(filepath.Join(out, "link")); !os.IsNotExist(err) {
		t.Errorf("a refused clone left %v", err)
	}
}

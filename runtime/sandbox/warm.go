package sandbox

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"

	"github.com/macvz/macvz/netplugin"
	"github.com/macvz/macvz/runtime/shim"
	"github.com/macvz/macvz/runtime/store"
	"github.com/macvz/macvz/runtime/vm"
	"github.com/macvz/macvz/snapshotter"
	"github.com/macvz/macvz/vmimage/imagestore"
)

// Warm start: the first cold boot of a VM (image, size, device layout) on
// this host saves the VM's state the moment its agent answers, with a
// copy of its disk files taken while it is paused; later sandboxes of the
// same VM restore that state instead of booting, then get their own
// identity (MAC, addresses, hostname, DNS, mounts) from the agent, as a
// cold-booted VM does. The state is saved before anything of the first
// sandbox reaches the guest: no mount (QEMU refuses to migrate a VM
// whose guest has a 9p share mounted), no address, no process.
//
// Not everything can change between save and restore: the vCPU count,
// memory size and the set of devices must match, which the warm key
// covers (warmIdentity). The NIC keeps the MAC it was saved with; a
// Linux guest's agent gives it the sandbox's (Interface.previous_mac).
// A macOS guest keeps it, and its machine identifier: macOS guests get
// one saved state per VM slot (see warmPlan). A restore that fails (a
// hypervisor upgrade that cannot read old states, a corrupt file) drops
// the state and boots cold.
//
// A restored guest's RNG is reseeded from the host (agent Reseed) before
// anything else runs in it. A VM its backend cannot restore
// (vm.Driver.Restorable: QEMU's arm64 guests) gets no warm key: its state is never saved, and it
// always boots cold.

// warmLayout changes when the VM a backend builds from a Spec changes in
// a way a saved state depends on (QEMU's device list): old states then
// stop matching instead of failing to restore.
const warmLayout = 5 // 4: QEMU VMs got a memory balloon; 5: qboot, no vmgenid

// warmIdentity is what a saved state and the VM restoring it must share.
type warmIdentity struct {
	Layout  int               `json:"layout"`
	Backend string            `json:"backend"`
	Content string            `json:"content"` // the image's layers (VMImage.Content)
	CPUs    int               `json:"cpus"`
	Memory  int64             `json:"memory"`
	Options map[string]string `json:"options,omitempty"`
	NICs    int               `json:"nics"`
	Shares  []string          `json:"shares,omitempty"`
	Disks   int               `json:"disks"`
	MacOS   bool              `json:"macos,omitempty"`
	// Cmdline is the kernel command line, from the image's config (not
	// in Content): images that share a kernel and initrd but boot with
	// other arguments are other VMs.
	Cmdline string `json:"cmdline,omitempty"`
	Slot    int    `json:"slot,omitempty"` // macOS: one state per VM slot
}

// warmKey names the saved state a spec of an image can restore; slot is
// 0 unless the state belongs to one VM slot.
func warmKey(backend, content string, spec *vm.Spec, slot int) string {
	id := warmIdentity{
		Layout: warmLayout, Backend: backend, Content: content, Slot: slot,
		CPUs: spec.CPUs, Memory: spec.MemoryBytes, Options: qemuIdentity(spec.QEMU),
		NICs: len(spec.NICs), Disks: len(spec.Disks), MacOS: spec.Boot.Kind == vm.BootMacOS,
		Cmdline: spec.Boot.Cmdline,
	}
	for _, sh := range spec.Shares {
		id.Shares = append(id.Shares, fmt.Sprintf("%s ro=%v", sh.Tag, sh.ReadOnly))
	}
	b, _ := json.Marshal(id) // plain data: cannot fail
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:16])
}

// qemuIdentity is how the QEMU options enter a warm key: as the string
// map they were before they had a type, so that states saved then keep
// their keys.
func qemuIdentity(o vm.QEMUOptions) map[string]string {
	m := map[string]string{"accel": o.Accel, "binary": o.Binary}
	if o.Machine != "" {
		m["machine"] = o.Machine
	}
	return m
}

// warmMeta is a saved state's record, <root>/warm/<key>/meta.json.
type warmMeta struct {
	Image    string        `json:"image"`
	Manifest digest.Digest `json:"manifest"`
	// MAC is the NIC's address when saved: a restored guest still has it.
	MAC string `json:"mac,omitempty"`
	// MachineID is a macOS guest's machine identifier when saved: the VM
	// restoring the state must have it.
	MachineID []byte `json:"machineId,omitempty"`
	// Disk is the committed snapshot holding the disk files as they were
	// when the state was saved; "" for a VM without disk files.
	Disk    string    `json:"disk,omitempty"`
	Created time.Time `json:"created"`
}

// warmState is a saved state ready to restore.
type warmState struct {
	key  string
	dir  string
	meta warmMeta
	// files are disk files in dir that replace the clone's (a
	// checkpoint's, see checkpoint.go).
	files []string
}

func (w *warmState) stateFile() string { return filepath.Join(w.dir, "state") }

// ramFile is the guest RAM file saved beside the state (vm.RAMFileSaver),
// when there is one: a regular file, as the daemon wrote it.
func (w *warmState) ramFile() (string, bool) {
	p := w.stateFile() + vm.RAMFileSuffix
	fi, err := os.Lstat(p)
	return p, err == nil && fi.Mode().IsRegular()
}

// warmStore keeps saved states under dir: one directory per key with the
// state and meta.json, made whole in a temporary directory and renamed.
type warmStore struct {
	dir string
	max int
	sn  *snapshotter.Snapshotter

	mu     sync.Mutex
	saving map[string]bool
	// coldOnly are the images (VMImage.Content) whose VMs boot cold, and
	// why, once said in the log.
	coldOnly map[string]coldNote
	// unsavable are the keys whose VMs the backend refused to save
	// (errdefs.ErrNotImplemented: the host's release, the VM's
	// configuration): not tried again until the daemon restarts.
	unsavable map[string]bool
}

// coldNote is why an image's VMs boot cold.
type coldNote struct{ image, why string }

func newWarmStore(dir string, max int, sn *snapshotter.Snapshotter) *warmStore {
	return &warmStore{dir: dir, max: max, sn: sn, saving: map[string]bool{}, coldOnly: map[string]coldNote{}, unsavable: map[string]bool{}}
}

// noteColdOnly logs, once per image, why its VMs boot cold.
func (w *warmStore) noteColdOnly(img *imagestore.VMImage, why error) {
	w.mu.Lock()
	_, seen := w.coldOnly[img.Content]
	if !seen {
		w.coldOnly[img.Content] = coldNote{img.Image.Name, why.Error()}
	}
	w.mu.Unlock()
	if !seen {
		slog.Info("warm start is off for this image: its VMs always boot cold", "image", img.Image.Name, "why", why)
	}
}

// noteUnsavable remembers that the backend refused to save the VMs of
// key, and says why once for the image.
func (w *warmStore) noteUnsavable(key string, img *imagestore.VMImage, why error) {
	w.mu.Lock()
	w.unsavable[key] = true
	w.mu.Unlock()
	w.noteColdOnly(img, why)
}

func (w *warmStore) isUnsavable(key string) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.unsavable[key]
}

// WarmStatus is what `crictl info` shows of warm start.
type WarmStatus struct {
	Enabled bool `json:"enabled"`
	// Host is why no VM of this host can be saved ("" when they can).
	Host string `json:"host,omitempty"`
	// ColdImages are the images whose VMs boot cold, and why.
	ColdImages map[string]string `json:"coldImages,omitempty"`
	// Pool is vm.warm_pool when the pool is on; PoolReady maps the
	// images it keeps VMs of to how many are ready.
	Pool      int            `json:"pool,omitempty"`
	PoolReady map[string]int `json:"poolReady,omitempty"`
}

// WarmStatus reports whether warm start is on, and where it is not.
func (s *Controller) WarmStatus() WarmStatus {
	if s.warm == nil {
		return WarmStatus{}
	}
	st := WarmStatus{Enabled: true, Host: s.warmHostOff}
	s.warm.mu.Lock()
	for _, n := range s.warm.coldOnly {
		if st.ColdImages == nil {
			st.ColdImages = map[string]string{}
		}
		st.ColdImages[n.image] = n.why
	}
	s.warm.mu.Unlock()
	if s.pool != nil {
		st.Pool, st.PoolReady = s.pool.size, s.pool.readyByImage()
	}
	return st
}

// warmHostCheck says once, at the start, why this host saves no VM at
// all (vz below macOS 14): nothing else would until a macOS pod boots.
func (s *Controller) warmHostCheck() {
	if s.cfg.Backend != "vz" {
		return
	}
	if err := shim.Restorable(s.cfg.Backend, &vm.Spec{Boot: vm.Boot{Kind: vm.BootMacOS}}); err != nil {
		s.warmHostOff = err.Error()
		slog.Warn("warm start is off on this host: macOS VMs always boot cold", "why", err)
	}
}

// warmSnapshotPrefix names the committed snapshots of saved disks.
const warmSnapshotPrefix = "macvz.warm/"

// has says whether key has a saved state, without marking it used.
func (w *warmStore) has(key string) bool {
	_, err := os.Stat(filepath.Join(w.dir, key, "meta.json"))
	return err == nil
}

// lookup returns the saved state of key, nil when there is none.
func (w *warmStore) lookup(key string) *warmState {
	dir := filepath.Join(w.dir, key)
	b, err := os.ReadFile(filepath.Join(dir, "meta.json"))
	if err != nil {
		return nil
	}
	ws := &warmState{key: key, dir: dir}
	if json.Unmarshal(b, &ws.meta) != nil {
		return nil
	}
	if _, err := os.Stat(ws.stateFile()); err != nil {
		return nil
	}
	// Its use time orders eviction.
	now := time.Now()
	os.Chtimes(filepath.Join(dir, "meta.json"), now, now)
	return ws
}

// begin reserves key for one save; false when a state exists or another
// boot is saving it.
func (w *warmStore) begin(key string) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.saving[key] {
		return false
	}
	if _, err := os.Stat(filepath.Join(w.dir, key, "meta.json")); err == nil {
		return false
	}
	w.saving[key] = true
	return true
}

func (w *warmStore) end(key string) {
	w.mu.Lock()
	delete(w.saving, key)
	w.mu.Unlock()
}

// tempDir is a new directory for a state being saved.
func (w *warmStore) tempDir() (string, error) {
	if err := os.MkdirAll(w.dir, 0o700); err != nil {
		return "", err
	}
	return os.MkdirTemp(w.dir, ".tmp-")
}

// saveDisk keeps the disk files (relative names in the sandbox's clone
// dir, cloned while the VM is paused) as a committed snapshot whose parent
// is the image's base, so later sandboxes clone it as they clone a base.
func (w *warmStore) saveDisk(ctx context.Context, key, base, cloneDir string, files []string) (string, error) {
	name := warmSnapshotPrefix + key
	active := name + "/saving-" + fmt.Sprint(time.Now().UnixNano())
	ms, err := w.sn.Prepare(ctx, active, base)
	if err != nil {
		return "", err
	}
	ok := false
	defer func() {
		if !ok {
			w.sn.Remove(context.WithoutCancel(ctx), active)
		}
	}()
	dst, err := snapshotter.Dir(ms)
	if err != nil {
		return "", err
	}
	for _, f := range files {
		// The prepared copy has the base's file; the sandbox's replaces it.
		if err := os.Remove(filepath.Join(dst, f)); err != nil && !os.IsNotExist(err) {
			return "", err
		}
		if _, err := snapshotter.CloneFile(filepath.Join(cloneDir, f), filepath.Join(dst, f)); err != nil {
			return "", fmt.Errorf("copying %s: %w", f, err)
		}
	}
	if err := w.sn.Commit(ctx, name, active); err != nil {
		return "", err
	}
	ok = true
	return name, nil
}

// commit makes a saved state (in tmp, with its meta) the state of key,
// then evicts the least recently used states beyond max.
func (w *warmStore) commit(ctx context.Context, key, tmp string, meta warmMeta) error {
	b, err := json.Marshal(meta)
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(tmp, "meta.json"), b, 0o600); err != nil {
		return err
	}
	if err := os.Rename(tmp, filepath.Join(w.dir, key)); err != nil {
		return err
	}
	w.evict(ctx)
	return nil
}

// evict removes the least recently used states beyond max.
func (w *warmStore) evict(ctx context.Context) {
	type entry struct {
		key  string
		used time.Time
	}
	var all []entry
	ents, _ := os.ReadDir(w.dir)
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), ".") || !e.IsDir() {
			continue
		}
		fi, err := os.Stat(filepath.Join(w.dir, e.Name(), "meta.json"))
		if err != nil {
			continue
		}
		all = append(all, entry{e.Name(), fi.ModTime()})
	}
	if len(all) <= w.max {
		return
	}
	sort.Slice(all, func(i, j int) bool { return all[i].used.After(all[j].used) })
	for _, e := range all[w.max:] {
		w.drop(ctx, e.key, "more saved states than vm.warm_states")
	}
}

// drop removes key's state; its disk snapshot goes now or, while
// sandboxes cloned from it exist, at a later sweep.
func (w *warmStore) drop(ctx context.Context, key, why string) {
	dir := filepath.Join(w.dir, key)
	if _, err := os.Stat(dir); err != nil {
		return
	}
	slog.Info("dropping a saved VM state", "key", key, "why", why)
	// Renamed first: a half-removed state must never be looked up.
	gone := filepath.Join(w.dir, ".gone-"+key+"-"+fmt.Sprint(time.Now().UnixNano()))
	if err := os.Rename(dir, gone); err != nil {
		slog.Warn("removing a saved VM state", "key", key, "err", err)
		return
	}
	os.RemoveAll(gone)
	w.sweep(ctx)
}

// dropImage removes the states saved from an image (by manifest), before
// the image and its base are removed.
func (w *warmStore) dropImage(ctx context.Context, manifest digest.Digest) {
	ents, _ := os.ReadDir(w.dir)
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), ".") {
			continue
		}
		b, err := os.ReadFile(filepath.Join(w.dir, e.Name(), "meta.json"))
		var m warmMeta
		if err == nil && json.Unmarshal(b, &m) == nil && m.Manifest == manifest {
			w.drop(ctx, e.Name(), "its image is removed")
		}
	}
}

// sweep removes what no state refers to: temporary directories of saves
// a crash interrupted, and disk snapshots of dropped states once no
// sandbox clone depends on them.
func (w *warmStore) sweep(ctx context.Context) {
	ents, _ := os.ReadDir(w.dir)
	w.mu.Lock()
	saving := len(w.saving) > 0
	w.mu.Unlock()
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), ".gone-") || strings.HasPrefix(e.Name(), ".tmp-") && !saving {
			os.RemoveAll(filepath.Join(w.dir, e.Name()))
		}
	}
	var names []string
	w.sn.Walk(ctx, func(_ context.Context, info snapshots.Info) error {
		if strings.HasPrefix(info.Name, warmSnapshotPrefix) {
			names = append(names, info.Name)
		}
		return nil
	})
	for _, name := range names {
		key, rest, _ := strings.Cut(strings.TrimPrefix(name, warmSnapshotPrefix), "/")
		if rest != "" {
			// An active snapshot of a save in progress or interrupted.
			if !saving {
				w.sn.Remove(ctx, name)
			}
			continue
		}
		if _, err := os.Stat(filepath.Join(w.dir, key)); err == nil {
			continue
		}
		// Fails while sandboxes cloned from it exist: a later sweep
		// (the next drop, the next daemon start) tries again.
		if err := w.sn.Remove(ctx, name); err != nil && !errdefs.IsNotFound(err) && !errdefs.IsFailedPrecondition(err) {
			slog.Warn("removing the disk of a dropped VM state", "snapshot", name, "err", err)
		}
	}
}

// warmPlan is a boot's warm-start key and, for a macOS guest, the MAC
// of its VM slot. A restored VM comes back with the MAC and machine
// identifier it was saved with. A Linux guest's agent then takes the
// sandbox's MAC; a macOS guest cannot (vmnet's DHCP server and the
// attachment know the VM by the MAC the framework gave it), so each VM
// slot has its own saved state, MAC and machine identifier, and a macOS
// sandbox's NIC gets its slot's MAC. That is sound for the attachments
// of macvz-net on macOS, whose ADD makes nothing on the host that depends
// on the MAC (netplugin/mode_darwin.go); with another attachment (a tap)
// a macOS guest boots cold.
func (s *Controller) warmPlan(sb *store.Sandbox, b *vmBoot) (key, mac string, err error) {
	// The key depends on the spec's shape only, not its paths.
	probe, err := s.vmSpec(sb.ID, sb.Dir, "", b.img.Descriptor, b.cpus, b.mem)
	if err != nil {
		return "", "", err
	}
	if sb.Network != nil {
		probe.NICs = []vm.NIC{sb.Network.NIC}
	}
	if s.hasVolumeShare(store.SpecOf(*sb)) {
		vs, _ := s.volumeShare(sb.ID, sb.Dir, nil) // its shape: cannot fail
		probe.Shares = append(probe.Shares, vs)
	}
	// A state the backend could not restore is not worth saving (and
	// saving pauses the VM and drops its agent connection).
	if err := shim.Restorable(s.cfg.Backend, probe); err != nil {
		s.warm.noteColdOnly(b.img, err)
		return "", "", nil
	}
	slot := 0
	if b.img.Descriptor.OS == "darwin" {
		if sb.Network != nil && !slotMACNIC(sb.Network.NIC.Kind) {
			return "", "", nil
		}
		slot = b.slot
		if sb.Network != nil {
			if mac, err = s.warm.slotMAC(slot); err != nil {
				return "", "", err
			}
		}
	}
	key = warmKey(s.cfg.Backend, b.img.Content, probe, slot)
	if s.warm.isUnsavable(key) {
		return "", "", nil
	}
	return key, mac, nil
}

// slotMACNIC says whether a NIC of kind can take its VM slot's MAC: the
// Virtualization.framework attachments, made when the VM starts.
func slotMACNIC(k vm.NICKind) bool {
	return k == vm.NICVmnetNAT || k == vm.NICVmnetBridged || k == vm.NICSocket
}

// slotMAC is the MAC of a VM slot on this host: derived from a random
// seed kept with the saved states, so that it is stable across restarts
// and differs between hosts (bridged VMs of two hosts share a LAN).
func (w *warmStore) slotMAC(slot int) (string, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	p := filepath.Join(w.dir, "slot-seed")
	seed, err := os.ReadFile(p)
	if os.IsNotExist(err) || err == nil && len(seed) == 0 {
		b := make([]byte, 16)
		if _, err := rand.Read(b); err != nil {
			return "", err
		}
		seed = []byte(hex.EncodeToString(b))
		if err := os.MkdirAll(w.dir, 0o700); err != nil {
			return "", err
		}
		if err := os.WriteFile(p, seed, 0o600); err != nil {
			return "", err
		}
	} else if err != nil {
		return "", err
	}
	return netplugin.GuestMAC("macvz-vm-slot", strings.TrimSpace(string(seed)), fmt.Sprint(slot)), nil
}

// errWarmRestore marks a failure of a boot that restored a saved state:
// the caller drops the state and boots cold.
var errWarmRestore = errors.New("restoring the saved VM state failed")

// saveWarm saves a cold-booted VM's state for key, now that its agent
// answers and before the sandbox's own setup reaches the guest. The VM is
// paused while its state is written and its disk files are copied, then
// resumed. Failing to save only costs later sandboxes their warm start;
// failing to resume fails the boot.
func (s *Controller) saveWarm(ctx context.Context, c shimSaver, key string, spec *vm.Spec, img *imagestore.VMImage, baseName, cloneDir string) error {
	log := sbLog(spec.ID)
	start := time.Now()
	result := WarmSaveFailed
	defer func() { s.rec().WarmSaved(result) }()
	var machineID []byte
	if spec.Boot.Kind == vm.BootMacOS {
		machineID = spec.Boot.MachineID
		if len(machineID) == 0 && spec.Boot.MachineIDFile != "" {
			machineID, _ = os.ReadFile(spec.Boot.MachineIDFile)
		}
		if len(machineID) == 0 {
			log.Warn("not saving the VM state for warm starts: the backend did not report the VM's machine identifier")
			return nil
		}
	}
	tmp, err := s.warm.tempDir()
	if err != nil {
		log.Warn("cannot save the VM state for warm starts", "err", err)
		return nil
	}
	committed := false
	defer func() {
		if !committed {
			os.RemoveAll(tmp)
		}
	}()
	// The RAM in a file of its own where the backend can: a restore maps
	// it instead of reading it (vm.RAMFileSaver).
	if err := c.SaveRAMFile(ctx, filepath.Join(tmp, "state")); err != nil {
		// The shim leaves a VM it could not save running, its agent
		// reachable. Resuming again costs nothing then, and tells a VM
		// that cannot run on from one that can.
		if errdefs.IsNotImplemented(err) {
			// The backend will refuse every VM of this key the same way.
			result = WarmSaveUnsupported
			s.warm.noteUnsavable(key, img, err)
		} else {
			log.Warn("cannot save the VM state for warm starts", "err", err)
		}
		if rerr := c.Resume(ctx); rerr != nil {
			return fmt.Errorf("the VM cannot run on after its state failed to save: %w", rerr)
		}
		return nil
	}
	var disk string
	var diskErr error
	if spec := img.Descriptor; spec.Disk != "" {
		files := []string{spec.Disk}
		if spec.NVRAM != "" {
			files = append(files, spec.NVRAM)
		}
		disk, diskErr = s.warm.saveDisk(ctx, key, baseName, cloneDir, files)
	}
	if err := c.Resume(ctx); err != nil {
		if disk != "" {
			s.sn.Remove(context.WithoutCancel(ctx), disk)
		}
		return fmt.Errorf("resuming the VM after saving its state: %w", err)
	}
	if diskErr != nil {
		log.Warn("cannot keep the VM's disk for warm starts", "err", diskErr)
		return nil
	}
	meta := warmMeta{Image: img.Image.Name, Manifest: img.Image.Manifest.Digest, Disk: disk, MachineID: machineID, Created: time.Now().UTC()}
	if len(spec.NICs) > 0 {
		meta.MAC = spec.NICs[0].MAC
	}
	if err := s.warm.commit(ctx, key, tmp, meta); err != nil {
		log.Warn("cannot record the saved VM state", "err", err)
		if disk != "" {
			s.sn.Remove(context.WithoutCancel(ctx), disk)
		}
		return nil
	}
	committed = true
	result = WarmSaveOK
	saved := &warmState{dir: filepath.Join(s.warm.dir, key)}
	var size int64
	if fi, err := os.Stat(saved.stateFile()); err == nil {
		size = fi.Size()
	}
	attrs := []any{"key", key, "image", img.Image.Name, "stateMiB", math.Round(float64(size)/(1<<20)*10) / 10}
	if f, ok := saved.ramFile(); ok {
		// Sparse: what the guest had written, the rest holes.
		attrs = append(attrs, "ramFileMiB", fileBlocks(f)>>20)
	}
	log.Info("saved the VM state for warm starts", append(attrs, "took", time.Since(start).Round(time.Millisecond))...)
	return nil
}

// shimSaver is the part of a shim client saveWarm uses.
type shimSaver interface {
	SaveRAMFile(ctx context.Context, path string) error
	Resume(ctx context.Context) error
}

// fileBlocks is the bytes a file has allocated (a sparse file's data), or
// 0 when that cannot be told.
func fileBlocks(path string) int64 {
	fi, err := os.Stat(path)
	if err != nil {
		return 0
	}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		return st.Blocks * 512
	}
	return fi.Size()
}

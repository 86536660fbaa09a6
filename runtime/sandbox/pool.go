package sandbox

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"

	"github.com/macvz/macvz/internal/atomicfile"
	"github.com/macvz/macvz/internal/guard"
	"github.com/macvz/macvz/netplugin"
	"github.com/macvz/macvz/runtime/agentapi"
	"github.com/macvz/macvz/runtime/shim"
	"github.com/macvz/macvz/runtime/store"
	"github.com/macvz/macvz/runtime/vm"
	"github.com/macvz/macvz/snapshotter"
	"github.com/macvz/macvz/vmimage/imagestore"
)

// The warm pool (vm.warm_pool): VMs restored from a saved state before
// any sandbox asks for them, so that a sandbox of that VM starts in one
// whose guest already runs. Restoring is the larger part of a warm
// start, and under TCG a new QEMU process runs every guest code path
// slowly the first time (the agent's answers, the 9p mount, the exec
// helper): a pooled VM has been through them once.
//
// A pooled VM is made for the sandbox that will take it: it has the
// sandbox ID (a fresh one, which the sandbox then gets instead of its
// own), so its directory, disk clone, NIC MAC and tap name are already
// the sandbox's. The tap is made as the network plugin's ADD makes one,
// and the ADD at RunPodSandbox adopts it (netplugin.CreateTap): QEMU
// stays attached. Its shared directories are mounted in the guest, and
// one process and an exec in it have run through the exec helper. What
// the sandbox still does is the CNI ADD and the guest's network, name
// and DNS.
//
// Only Linux guests on QEMU are pooled: a macOS guest's saved state
// belongs to one VM slot (warm.go), and a Mac runs two. Pooled VMs count
// against vm.max_linux_vms; a sandbox that needs the slot of one gets
// it (the pooled VM is discarded). They are not sandboxes: no CRI call
// lists them. A directory of StateDir with poolMarkerFile and no record
// is a pooled VM of an earlier daemon, discarded at start.

// errPoolOtherVM: the pooled VM a sandbox took is not the VM its first
// container's image boots (claimPooled guessed).
var errPoolOtherVM = errors.New("the pooled VM is of another image or size")

// poolMarkerFile marks the directory of a pooled VM; it holds poolMarker.
const poolMarkerFile = "pooled.json"

// poolMarker is what discarding a pooled VM needs besides its directory.
type poolMarker struct {
	Disk string `json:"disk,omitempty"` // its disk clone's snapshot key
	Tap  string `json:"tap,omitempty"`  // the tap it made
}

// poolShape is the VM a pooled VM is: the saved state it restores and
// how its sandbox reaches the network.
type poolShape struct {
	key  string // the state's warm key
	img  *imagestore.VMImage
	cpus int
	mem  int64
	// hostNet: a user-mode NIC (a host-network pod that forwards no
	// port); else a tap on the pod network named network, as ifName.
	hostNet         bool
	network, ifName string
}

// slot is where the pool keeps VMs of a shape: sandboxes match it before
// their network exists, so it leaves the network's name out.
func (p poolShape) slot() string {
	if p.hostNet {
		return p.key + "/host"
	}
	return p.key + "/pod"
}

// pooledVM is one VM in the pool.
type pooledVM struct {
	id, dir string
	shape   poolShape
	conn    shim.Conn
	disk    string // snapshot key of its disk clone ("" for a diskless guest)
	nic     vm.NIC
	// prevMAC is the MAC the guest was saved with, which the sandbox's
	// network setup replaces.
	prevMAC string
}

// warmPool holds the pooled VMs.
type warmPool struct {
	size int
	wake chan struct{}
	ctx  context.Context
	stop context.CancelFunc
	done chan struct{}

	mu     sync.Mutex
	shapes map[string]poolShape   // by slot
	noted  map[string]time.Time   // by slot: when a sandbox of it last booted
	ready  map[string][]*pooledVM // by slot
	// claimed are the VMs sandboxes took, by sandbox ID, from
	// RunPodSandbox's start until their Boot (or removal).
	claimed map[string]*pooledVM
}

func newWarmPool(size int) *warmPool {
	ctx, stop := context.WithCancel(context.Background())
	return &warmPool{size: size, wake: make(chan struct{}, 1), ctx: ctx, stop: stop, done: make(chan struct{}),
		shapes: map[string]poolShape{}, noted: map[string]time.Time{}, ready: map[string][]*pooledVM{}, claimed: map[string]*pooledVM{}}
}

func (p *warmPool) poke() {
	select {
	case p.wake <- struct{}{}:
	default:
	}
}

// count is how many VMs wait in the pool.
func (p *warmPool) count() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := 0
	for _, vms := range p.ready {
		n += len(vms)
	}
	return n
}

// readyByImage counts the ready VMs by image name, with an entry for
// every image the pool keeps VMs of.
func (p *warmPool) readyByImage() map[string]int {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := map[string]int{}
	for k, sh := range p.shapes {
		out[sh.img.Image.Name] += len(p.ready[k])
	}
	return out
}

// next is a shape that has fewer ready VMs than the pool's size.
func (p *warmPool) next() (poolShape, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	slots := make([]string, 0, len(p.shapes))
	for k := range p.shapes {
		slots = append(slots, k)
	}
	sort.Strings(slots)
	for _, k := range slots {
		if len(p.ready[k]) < p.size {
			return p.shapes[k], true
		}
	}
	return poolShape{}, false
}

// add puts a new VM in the pool; false once the pool is closed or the
// shape was dropped meanwhile.
func (p *warmPool) add(v *pooledVM) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.ctx.Err() != nil {
		return false
	}
	if _, ok := p.shapes[v.shape.slot()]; !ok {
		return false
	}
	p.ready[v.shape.slot()] = append(p.ready[v.shape.slot()], v)
	return true
}

// take removes a ready VM of slot from the pool (the oldest).
func (p *warmPool) take(slot string) *pooledVM {
	p.mu.Lock()
	defer p.mu.Unlock()
	vms := p.ready[slot]
	if len(vms) == 0 {
		return nil
	}
	v := vms[0]
	p.ready[slot] = vms[1:]
	return v
}

// takeLatest removes a ready VM of the shape noted last among those of
// one kind of network (hostNet or not).
func (p *warmPool) takeLatest(hostNet bool) *pooledVM {
	p.mu.Lock()
	var best string
	for k, sh := range p.shapes {
		if sh.hostNet == hostNet && len(p.ready[k]) > 0 && (best == "" || p.noted[k].After(p.noted[best])) {
			best = k
		}
	}
	p.mu.Unlock()
	if best == "" {
		return nil
	}
	return p.take(best)
}

// takeAny removes some ready VM (for its slot); nil when there is none.
func (p *warmPool) takeAny() *pooledVM {
	p.mu.Lock()
	defer p.mu.Unlock()
	for k, vms := range p.ready {
		if len(vms) > 0 {
			p.ready[k] = vms[1:]
			return vms[0]
		}
	}
	return nil
}

// drain removes the ready VMs that match and forgets their shapes.
func (p *warmPool) drain(match func(poolShape) bool) []*pooledVM {
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []*pooledVM
	for k, sh := range p.shapes {
		if match(sh) {
			out = append(out, p.ready[k]...)
			delete(p.ready, k)
			delete(p.shapes, k)
			delete(p.noted, k)
		}
	}
	return out
}

// claim records that sandbox id took v; unclaim hands it back to the
// caller once.
func (p *warmPool) claim(id string, v *pooledVM) {
	p.mu.Lock()
	p.claimed[id] = v
	p.mu.Unlock()
}

func (p *warmPool) unclaim(id string) *pooledVM {
	p.mu.Lock()
	defer p.mu.Unlock()
	v := p.claimed[id]
	delete(p.claimed, id)
	return v
}

// note makes shape one the pool keeps ready; true when it is new.
func (p *warmPool) note(shape poolShape) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	old, ok := p.shapes[shape.slot()]
	p.shapes[shape.slot()] = shape
	p.noted[shape.slot()] = time.Now()
	if ok && old.network == shape.network && old.ifName == shape.ifName && old.img.Content == shape.img.Content {
		return false
	}
	return true
}

// forget stops keeping a shape ready (its VMs fail to restore).
func (p *warmPool) forget(slot string) {
	p.mu.Lock()
	delete(p.shapes, slot)
	delete(p.noted, slot)
	p.mu.Unlock()
}

// poolable is the pool slot of a sandbox's VM, or false when it cannot
// come from the pool. It needs nothing the sandbox gets later (its
// network, its containers): RunPodSandbox asks before either.
func (s *Controller) poolable(sb *store.Sandbox, img *imagestore.VMImage, cpus int, mem int64) (poolShape, bool) {
	spec := store.SpecOf(*sb)
	if !s.poolableSandbox(sb) || img.Descriptor.OS != "linux" {
		return poolShape{}, false
	}
	probe, err := s.vmSpec(sb.ID, sb.Dir, "", img.Descriptor, cpus, mem)
	if err != nil {
		return poolShape{}, false
	}
	probe.NICs = []vm.NIC{{}} // a pod's one NIC: the key counts them
	if shim.Restorable(s.cfg.Backend, probe) != nil {
		return poolShape{}, false
	}
	return poolShape{key: warmKey(s.cfg.Backend, img.Content, probe, 0), img: img, cpus: cpus, mem: mem, hostNet: spec.HostNetwork}, true
}

// poolableSandbox says whether a sandbox's VM, whatever its image, could
// come from the pool.
func (s *Controller) poolableSandbox(sb *store.Sandbox) bool {
	spec := store.SpecOf(*sb)
	if s.pool == nil || s.warm == nil || s.cfg.Backend != "qemu" ||
		spec.NoAgent || len(spec.NodeShares) > 0 || sb.Restore != nil || sb.Node || s.hasVolumeShare(spec) {
		return false
	}
	return !spec.HostNetwork || hostNetworkNIC() == vm.NICUser && len(hostNetworkForwards(spec.Ports)) == 0
}

// claimPooled gives a new sandbox (not yet recorded) a pooled VM when
// one may fit: its ID, directory and disk clone become the VM's. With
// img (a runtime handler's vm_image) the VM is known; without, it is the
// first container's image, known only when it starts (Boot): the
// sandbox takes a VM of the image most recently booted on its kind of
// network, which Boot uses if the image is that one and discards
// otherwise. A node running pods of one image, as a CI fleet does,
// mostly guesses right.
func (s *Controller) claimPooled(sb *store.Sandbox, img *imagestore.VMImage) {
	if !s.poolableSandbox(sb) {
		return
	}
	var v *pooledVM
	if img != nil {
		cpus, mem := s.vmSize(store.SpecOf(*sb).Resources, nil, img.Descriptor)
		shape, ok := s.poolable(sb, img, cpus, mem)
		if !ok {
			return
		}
		v = s.pool.take(shape.slot())
	} else {
		v = s.pool.takeLatest(store.SpecOf(*sb).HostNetwork)
	}
	if v == nil {
		return
	}
	sbLog(v.id).Info("a new sandbox takes a pooled VM", "name", sb.Name, "was", sb.ID)
	sb.ID, sb.Dir, sb.Disk = v.id, v.dir, v.disk
	// Refilled after the sandbox's boot (notePoolable), not during it.
	s.pool.claim(v.id, v)
}

// notePoolable keeps VMs like a sandbox's ready, after its boot.
func (s *Controller) notePoolable(ctx context.Context, sb store.Sandbox, b *vmBoot) {
	if s.pool == nil || b.key == "" {
		return
	}
	shape, ok := s.poolable(&sb, b.img, b.cpus, b.mem)
	if !ok || shape.key != b.key {
		return
	}
	if !shape.hostNet {
		// The plugin's tap and MAC follow from the network's name and the
		// sandbox ID (netplugin.TapName, GuestMAC): a pooled VM can only
		// have them before the ADD if this network is that plugin's.
		att, err := s.net.Attachment(sb.ID)
		n := sb.Network
		if err != nil || n == nil || n.NIC.Kind != vm.NICTap ||
			n.NIC.Device != netplugin.TapName(att.Network, sb.ID, n.IfName) || n.NIC.MAC != netplugin.GuestMAC(att.Network, sb.ID, n.IfName) {
			return
		}
		shape.network, shape.ifName = att.Network, n.IfName
	}
	if s.pool.note(shape) {
		sbLog(sb.ID).Info("keeping VMs like this one ready (vm.warm_pool)", "image", b.img.Image.Name, "count", s.pool.size, "hostNetwork", shape.hostNet)
	}
	s.pool.poke()
}

// runPool fills the pool until the controller closes: one VM at a time,
// each after the cold boots waiting for a turn.
func (s *Controller) runPool() {
	defer close(s.pool.done)
	ctx := s.pool.ctx
	for {
		select {
		case <-ctx.Done():
			return
		case <-s.pool.wake:
		}
		s.prunePool(ctx)
		for ctx.Err() == nil {
			shape, ok := s.pool.next()
			if !ok || !s.poolRoom() {
				break
			}
			v, err := s.poolBoot(ctx, shape)
			if err != nil {
				if ctx.Err() == nil {
					slog.Warn("making a pooled VM failed; not keeping VMs of this image ready until another sandbox of it boots", "image", shape.img.Image.Name, "err", err)
					s.pool.forget(shape.slot())
				}
				continue
			}
			if !s.pool.add(v) {
				s.discardPooled(context.Background(), v, "the pool closed or no longer keeps its image", nil)
			}
		}
	}
}

// prunePool discards the VMs of saved states that are gone (evicted
// beyond vm.warm_states, dropped with their image or after a failed
// restore), so the pool holds VMs of at most the states kept.
func (s *Controller) prunePool(ctx context.Context) {
	for _, v := range s.pool.drain(func(sh poolShape) bool { return !s.warm.has(sh.key) }) {
		s.discardPooled(ctx, v, "its saved state is gone", nil)
	}
}

// poolRoom says whether another pooled VM fits under vm.max_linux_vms.
func (s *Controller) poolRoom() bool {
	limit := s.cfg.MaxLinuxVMs
	if limit == 0 {
		return true
	}
	holders, err := s.slotHolders("linux", "")
	return err == nil && len(holders)+s.pool.count()+1 <= limit
}

// poolEvict discards a pooled VM when a sandbox needs its slot: holders
// VMs run or boot besides the sandbox's.
func (s *Controller) poolEvict(holders int) {
	if s.pool == nil || s.cfg.MaxLinuxVMs == 0 || holders+1+s.pool.count() <= s.cfg.MaxLinuxVMs {
		return
	}
	if v := s.pool.takeAny(); v != nil {
		guard.Go(sbLog(v.id), "discarding a pooled VM", func() {
			s.discardPooled(context.Background(), v, "a sandbox needs its VM slot", nil)
		})
	}
}

// poolBoot makes one pooled VM of shape: its directory (marked first),
// disk clone and tap, then the shim restoring the saved state, the
// guest reseeded, its shares mounted and one process started through
// the exec helper. On failure nothing of it is left.
func (s *Controller) poolBoot(ctx context.Context, shape poolShape) (_ *pooledVM, retErr error) {
	ws := s.warm.lookup(shape.key)
	if ws == nil {
		return nil, fmt.Errorf("no saved state %s", shape.key)
	}
	if len(ws.files) > 0 {
		return nil, errors.New("the saved state replaces disk files")
	}
	release, err := s.bootTurn(ctx)
	if err != nil {
		return nil, err
	}
	defer release()
	start := time.Now()
	id := store.NewID()
	v := &pooledVM{id: id, dir: s.Dir(id), shape: shape, prevMAC: ws.meta.MAC}
	log := sbLog(id)
	img := shape.img
	if img.Descriptor.Disk != "" {
		v.disk = diskKey(id)
	}
	if shape.hostNet {
		v.nic = vm.NIC{Kind: vm.NICUser, MAC: netplugin.GuestMAC("host-network", id, "eth0")}
	} else {
		v.nic = vm.NIC{Kind: vm.NICTap, Device: netplugin.TapName(shape.network, id, shape.ifName), MAC: netplugin.GuestMAC(shape.network, id, shape.ifName)}
	}
	if err := os.MkdirAll(v.dir, 0o700); err != nil {
		return nil, err
	}
	mark, _ := json.Marshal(poolMarker{Disk: v.disk, Tap: v.nic.Device})
	if err := atomicfile.WriteFile(filepath.Join(v.dir, poolMarkerFile), mark, 0o600); err != nil {
		os.RemoveAll(v.dir)
		return nil, err
	}
	defer func() {
		if retErr != nil {
			why := "making it failed"
			if ctx.Err() != nil {
				why = "the pool closed while it was made"
			}
			s.discardPooled(context.WithoutCancel(ctx), v, why, nil)
		}
	}()
	base := img.BaseDir
	if v.disk != "" {
		parent := img.Base
		if ws.meta.Disk != "" {
			parent = ws.meta.Disk
		}
		ms, err := s.sn.Prepare(ctx, v.disk, parent)
		if err != nil {
			return nil, fmt.Errorf("cloning the VM disk: %w", err)
		}
		if base, err = snapshotter.Dir(ms); err != nil {
			return nil, err
		}
	}
	spec, err := s.vmSpec(id, v.dir, base, img.Descriptor, shape.cpus, shape.mem)
	if err != nil {
		return nil, err
	}
	spec.NICs = []vm.NIC{v.nic}
	spec.Savable = true
	spec.RestoreFrom = ws.stateFile()
	if f, ok := ws.ramFile(); ok {
		spec.RestoreRAM = f
	}
	if !shape.hostNet {
		if err := netplugin.CreateTap(v.nic.Device); err != nil {
			return nil, err
		}
	}
	if err := prepareShare(v.dir); err != nil {
		return nil, fmt.Errorf("preparing the VM's share: %w", err)
	}
	c, err := s.shimProcs.Spawn(ctx, shim.SpawnOptions{Binary: s.cfg.ShimBinary, Dir: v.dir, Backend: s.cfg.Backend, Spec: spec, LogLevel: s.cfg.ShimLogLevel})
	if err != nil {
		return nil, fmt.Errorf("starting the VM's shim: %w", err)
	}
	v.conn = c
	if _, err := c.Start(ctx, agentWait(ctx, s.cfg.BootTimeout)); err != nil {
		return nil, fmt.Errorf("restoring the VM: %w", err)
	}
	a := c.Agent()
	if err := reseedGuest(ctx, a); err != nil {
		return nil, err
	}
	// The shares are the sandbox directory's, which is the pooled VM's;
	// mounted now, as the rest of what a pod's start would run.
	if err := s.mountAllShares(ctx, a, store.SandboxSpec{}, img.Descriptor.OS, false); err != nil {
		return nil, err
	}
	if err := warmUpProcess(ctx, a); err != nil {
		return nil, err
	}
	log.Info("pooled VM ready", "image", img.Image.Name, "hostNetwork", shape.hostNet, "took", time.Since(start).Round(time.Millisecond))
	return v, nil
}

// warmUpMain and warmUpExec are the processes a pooled VM runs once.
var (
	warmUpMain = &agentapi.ProcessID{ContainerId: "macvz-pool-warmup"}
	warmUpExec = &agentapi.ProcessID{ContainerId: "macvz-pool-warmup", ExecId: "exec"}
)

// warmUpProcess runs what a pod's start runs in the guest, once: a
// container's process with its isolation (its own mount namespace,
// masked and read-only paths, bounded capabilities, the default seccomp
// profile) and an exec in it (which joins that namespace), so that the
// agent's and the exec helper's code for them has run in this QEMU
// process. Both are gone when it returns.
func warmUpProcess(ctx context.Context, a agentapi.AgentClient) (retErr error) {
	defer func() {
		if retErr != nil {
			retErr = fmt.Errorf("the warm-up process: %w", retErr)
		}
	}()
	iso := func(id *agentapi.ProcessID, argv ...string) *agentapi.CreateProcessRequest {
		return &agentapi.CreateProcessRequest{
			Id: id, Argv: argv, Env: []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}, Cwd: "/",
			OwnMountNamespace: id.GetExecId() == "", MaskedPaths: []string{"/proc/kcore"}, ReadonlyPaths: []string{"/proc/sys"},
			RestrictCapabilities: true, Capabilities: []string{"CAP_CHOWN", "CAP_KILL"}, SeccompRuntimeDefault: true,
		}
	}
	cleanup := context.WithoutCancel(ctx)
	run := func(req *agentapi.CreateProcessRequest) error {
		if _, err := a.CreateProcess(ctx, req); err != nil {
			return err
		}
		_, err := a.StartProcess(ctx, &agentapi.StartProcessRequest{Id: req.Id})
		return err
	}
	defer a.RemoveProcess(cleanup, &agentapi.RemoveProcessRequest{Id: warmUpMain})
	if err := run(iso(warmUpMain, "sleep", "60")); err != nil {
		return err
	}
	defer func() {
		a.SignalProcess(cleanup, &agentapi.SignalProcessRequest{Id: warmUpMain, Signal: 9, Group: true})
		a.WaitProcess(cleanup, &agentapi.WaitProcessRequest{Id: warmUpMain})
	}()
	defer a.RemoveProcess(cleanup, &agentapi.RemoveProcessRequest{Id: warmUpExec})
	if err := run(iso(warmUpExec, "true")); err != nil {
		return err
	}
	st, err := a.WaitProcess(ctx, &agentapi.WaitProcessRequest{Id: warmUpExec})
	if err != nil {
		return err
	}
	if c := st.GetStatus().GetExitCode(); c != 0 {
		return fmt.Errorf("its exec exited %d", c)
	}
	return nil
}

// bootPooled brings a sandbox up in the pooled VM it claimed: the VM
// runs already; the guest gets the sandbox's network, name and DNS.
// On failure the VM is discarded and the sandbox's record is as before:
// Boot then restores or boots one as usual.
func (s *Controller) bootPooled(ctx context.Context, sb *store.Sandbox, b *vmBoot, v *pooledVM) (retErr error) {
	start := time.Now()
	n := sb.Network
	ctx, span := startBootSpan(ctx, start, sb.ID, b.img.Descriptor.OS, BootPool)
	defer func() {
		s.rec().BootDone(b.img.Descriptor.OS, true, time.Since(start), retErr)
		endBootSpan(span, retErr)
		if retErr == nil {
			return
		}
		// A NIC the pod's ADD made from the pooled VM's tap stays the
		// pod's: its DEL removes it.
		s.discardPooled(context.WithoutCancel(ctx), v, retErr.Error(), n)
		if r, err := s.st.UpdateSandbox(sb.ID, func(r *store.Sandbox) error { r.Disk = ""; return nil }); err == nil {
			*sb = r
		}
	}()
	switch {
	case v.shape.key != b.key:
		return errPoolOtherVM
	case n == nil || n.NIC.Kind != v.nic.Kind || n.NIC.Device != v.nic.Device || n.NIC.MAC != v.nic.MAC || len(n.NIC.Forwards) > 0:
		return errors.New("the pod's NIC is not the pooled VM's (the network configuration changed?)")
	}
	s.addShim(sb.ID, v.conn)
	if err := s.setupGuest(ctx, v.conn.Agent(), store.SpecOf(*sb), n, v.prevMAC, b.img.Descriptor.OS, false); err != nil {
		return err
	}
	rec, err := s.st.UpdateSandbox(sb.ID, func(r *store.Sandbox) error {
		r.Disk = v.disk
		b.recordVM(r)
		b.recordBooted(r, BootPool)
		return nil
	})
	if err != nil {
		return err
	}
	*sb = rec
	os.Remove(filepath.Join(sb.Dir, poolMarkerFile))
	s.afterBoot(rec)
	sbLog(sb.ID).Info("VM taken from the warm pool", "slot", b.slot, "cpus", b.cpus, "memoryMiB", b.mem>>20, "image", b.img.Image.Name,
		"total", time.Since(start).Round(time.Millisecond))
	return nil
}

// discardPooled ends a pooled VM and removes what it has: the shim and
// VM, the tap it made (unless adopted names the sandbox network whose ADD
// took it: that network's DEL removes it), the disk clone and, unless a
// sandbox record owns it, the directory.
func (s *Controller) discardPooled(ctx context.Context, v *pooledVM, why string, adopted *store.Network) {
	log := sbLog(v.id)
	log.Info("discarding a pooled VM", "why", why)
	s.dropShim(v.id)
	if v.conn != nil {
		v.conn.Close()
	}
	m := poolMarker{Disk: v.disk, Tap: v.nic.Device}
	if adopted != nil && adopted.NIC.Device == m.Tap {
		m.Tap = ""
	}
	discardPooledDir(ctx, s, v.id, v.dir, m, log)
}

// discardPooledDir is discardPooled from what the directory's marker says.
func discardPooledDir(ctx context.Context, s *Controller, id, dir string, m poolMarker, log *slog.Logger) {
	s.endVM(ctx, dir, m.Disk, log)
	if m.Tap != "" {
		if err := netplugin.DeleteTap(m.Tap); err != nil {
			log.Warn("deleting a pooled VM's tap", "err", err)
		}
	}
	if _, err := s.st.Sandbox(id); errdefs.IsNotFound(err) {
		if err := removeSandboxFiles(dir); err != nil {
			log.Warn("removing a pooled VM's directory", "err", err)
		}
		return
	}
	os.Remove(filepath.Join(dir, poolMarkerFile))
}

// readPoolMarker is the marker of pooled VM id, keeping only what a
// pooled VM of that ID can have made: its own disk key and a tap of the
// plugin's (the state directory is root's, but a marker never names
// anything else to remove).
func readPoolMarker(id string, b []byte) poolMarker {
	var m poolMarker
	if json.Unmarshal(b, &m) != nil {
		return poolMarker{}
	}
	if m.Disk != diskKey(id) {
		m.Disk = ""
	}
	if !strings.HasPrefix(m.Tap, netplugin.TapPrefix) {
		m.Tap = ""
	}
	return m
}

// sweepPool discards the pooled VMs an earlier daemon left: directories
// of StateDir with a marker and no sandbox record.
func (s *Controller) sweepPool(ctx context.Context) {
	ents, _ := os.ReadDir(s.cfg.StateDir)
	for _, e := range ents {
		if !e.IsDir() {
			continue
		}
		dir := filepath.Join(s.cfg.StateDir, e.Name())
		b, err := os.ReadFile(filepath.Join(dir, poolMarkerFile))
		if err != nil {
			continue
		}
		if _, err := s.st.Sandbox(e.Name()); !errdefs.IsNotFound(err) {
			continue // a sandbox took it; its marker outlived the take
		}
		m := readPoolMarker(e.Name(), b)
		log := sbLog(e.Name())
		log.Info("discarding a pooled VM of the previous daemon")
		discardPooledDir(ctx, s, e.Name(), dir, m, log)
	}
}

// pokePool has the pool look for room to fill (a VM slot was freed).
func (s *Controller) pokePool() {
	if s.pool != nil {
		s.pool.poke()
	}
}

// claimedPooled is the pooled VM sandbox id claimed, once.
func (s *Controller) claimedPooled(id string) *pooledVM {
	if s.pool == nil {
		return nil
	}
	return s.pool.unclaim(id)
}

// forgetPooled discards a pooled VM a sandbox claimed but never booted
// in (its RunPodSandbox failed first).
func (s *Controller) forgetPooled(ctx context.Context, sb store.Sandbox) {
	if v := s.claimedPooled(sb.ID); v != nil {
		s.discardPooled(ctx, v, "its sandbox was removed before it used it", sb.Network)
		s.pool.poke()
		return
	}
	// A daemon that died between the claim and the boot: the marker
	// still names the tap, which no ADD took if the sandbox has none.
	if b, err := os.ReadFile(filepath.Join(sb.Dir, poolMarkerFile)); err == nil {
		if m := readPoolMarker(sb.ID, b); m.Tap != "" && (sb.Network == nil || sb.Network.NIC.Device != m.Tap) {
			if err := netplugin.DeleteTap(m.Tap); err != nil {
				sbLog(sb.ID).Warn("deleting the tap of the pooled VM the sandbox took", "err", err)
			}
		}
	}
}

// closePool stops filling the pool and discards its VMs.
func (s *Controller) closePool() {
	if s.pool == nil {
		return
	}
	s.pool.stop()
	<-s.pool.done
	for _, v := range s.pool.drain(func(poolShape) bool { return true }) {
		s.discardPooled(context.Background(), v, "the daemon stops", nil)
	}
}

// dropPooledImage discards the pooled VMs of an image (by manifest) that
// is about to be removed.
func (s *Controller) dropPooledImage(ctx context.Context, manifest digest.Digest) {
	if s.pool == nil {
		return
	}
	for _, v := range s.pool.drain(func(sh poolShape) bool { return sh.img.Image.Manifest.Digest == manifest }) {
		s.discardPooled(ctx, v, "its image is removed", nil)
	}
}

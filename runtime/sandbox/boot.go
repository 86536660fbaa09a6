package sandbox

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/containerd/errdefs"
	"golang.org/x/sync/errgroup"

	"github.com/macvz/macvz/runtime/agentapi"
	"github.com/macvz/macvz/runtime/shim"
	"github.com/macvz/macvz/runtime/shimapi"
	"github.com/macvz/macvz/runtime/store"
	"github.com/macvz/macvz/runtime/vm"
	"github.com/macvz/macvz/snapshotter"
	"github.com/macvz/macvz/vmimage/imagestore"
)

// vmStopGrace is how long a stopping VM gets between the guest's
// shutdown request and a hard stop.
const vmStopGrace = 10 * time.Second

// vmBoot is one boot of a sandbox's VM.
type vmBoot struct {
	img  *imagestore.VMImage
	cpus int
	mem  int64
	slot int // the VM slot reserved for it
	// key is its warm-start key ("" = no warm start); mac, when set, is
	// the MAC its NIC gets instead of the attachment's (the slot's, for a
	// macOS guest: see warmPlan).
	key, mac string
	// restored: the VM resumes from a checkpoint (Sandbox.Restore).
	restored bool
}

// Boot boots the sandbox's VM from img: from a saved state of the same VM
// when there is one (warm start, see warm.go), else cold; a failed
// restore drops that state and boots cold. ctrs are the resources of the
// sandbox's containers, which size the VM when its spec does not. On
// failure nothing of the boot is left. The caller holds the sandbox lock.
func (s *Controller) Boot(ctx context.Context, sb *store.Sandbox, img *imagestore.VMImage, ctrs []store.Resources) (retErr error) {
	b := &vmBoot{img: img}
	b.cpus, b.mem = s.vmSize(store.SpecOf(*sb).Resources, ctrs, img.Descriptor)
	if r := sb.Restore; r != nil {
		// A restored sandbox (checkpoint.go): its VM is the
		// checkpointed one, sized as it was, and never boots cold (that
		// would lose the processes).
		b.cpus, b.mem = r.CPUs, r.MemoryBytes
	}
	slot, release, err := s.reserveVM(sb.ID, img.Descriptor.OS)
	if err != nil {
		return err
	}
	defer release()
	b.slot = slot
	if r := sb.Restore; r != nil {
		b.restored = true
		return s.retryExhausted(ctx, sb.ID, img.Descriptor.OS, func() error {
			if err := s.bootVMFrom(ctx, sb, b, restoredState(r)); err != nil {
				return fmt.Errorf("resuming the VM from its checkpoint: %w", err)
			}
			return nil
		})
	}
	// An agentless VM is never saved: nothing says when its guest has
	// finished booting.
	if s.warm != nil && !store.SpecOf(*sb).NoAgent {
		if b.key, b.mac, err = s.warmPlan(sb, b); err != nil {
			return err
		}
	}
	defer func() {
		if retErr == nil {
			s.notePoolable(ctx, *sb, b)
		}
	}()
	if v := s.claimedPooled(sb.ID); v != nil {
		err := s.bootPooled(ctx, sb, b, v)
		switch {
		case err == nil || ctx.Err() != nil:
			return err
		case errors.Is(err, errPoolOtherVM):
			sbLog(sb.ID).Info("the pooled VM the sandbox took is not its image's; restoring or booting one", "image", img.Image.Name)
		default:
			sbLog(sb.ID).Warn("the pooled VM could not be used; restoring or booting one", "err", err)
		}
	}
	return s.retryExhausted(ctx, sb.ID, img.Descriptor.OS, func() error {
		if b.key != "" {
			ws := s.warm.lookup(b.key)
			s.rec().WarmLookup(ws != nil)
			if ws != nil {
				err := s.bootVMFrom(ctx, sb, b, ws)
				// A hypervisor at its VM limit says nothing about the state.
				if err == nil || ctx.Err() != nil || errdefs.IsResourceExhausted(err) {
					return err
				}
				sbLog(sb.ID).Warn("restoring the saved VM state failed; booting cold", "key", b.key, "err", err)
				s.warm.drop(context.WithoutCancel(ctx), b.key, "a restore failed")
			}
		}
		return s.bootVMFrom(ctx, sb, b, nil)
	})
}

// bootVMFrom clones the disk (the image's base, or the saved state's
// disk) for the sandbox, starts its shim and VM (restoring ws when set)
// and prepares the guest (MAC, addresses, hostname, DNS, the shared
// directory). A cold boot with a warm key saves the VM's state first,
// when none is saved yet. On failure everything it made is undone and the
// sandbox record is as before (VMImage, its slot and MAC aside).
func (s *Controller) bootVMFrom(ctx context.Context, sb *store.Sandbox, b *vmBoot, ws *warmState) (retErr error) {
	img, cpus, mem := b.img, b.cpus, b.mem
	log := sbLog(sb.ID)
	start := time.Now()
	ctx, span := startBootSpan(ctx, start, sb.ID, img.Descriptor.OS, bootKind(b, ws))
	defer func() {
		s.rec().BootDone(img.Descriptor.OS, ws != nil, time.Since(start), retErr)
		endBootSpan(span, retErr)
	}()
	baseName := img.Base
	parent := baseName
	if ws != nil && ws.meta.Disk != "" {
		parent = ws.meta.Disk
	}
	var key string
	if img.Descriptor.Disk != "" {
		key = diskKey(sb.ID)
	}
	// Record the clone before making it, so a crash in between leaves a
	// record that reconcile and RemovePodSandbox clean up.
	rec, err := s.st.UpdateSandbox(sb.ID, func(r *store.Sandbox) error {
		r.Disk = key
		b.recordVM(r)
		if b.mac != "" && r.Network != nil {
			r.Network.NIC.MAC = b.mac
		}
		return nil
	})
	if err != nil {
		return err
	}
	*sb = rec
	defer func() {
		if retErr == nil {
			return
		}
		s.dropShim(sb.ID)
		s.endVM(context.WithoutCancel(ctx), sb.Dir, key, log)
		if key == "" {
			return
		}
		if r, err := s.st.UpdateSandbox(sb.ID, func(r *store.Sandbox) error { r.Disk = ""; return nil }); err == nil {
			*sb = r
		}
	}()
	var base string
	if key != "" {
		ms, err := s.sn.Prepare(ctx, key, parent)
		if err != nil {
			return fmt.Errorf("cloning the VM disk: %w", err)
		}
		if base, err = snapshotter.Dir(ms); err != nil {
			return err
		}
		if ws != nil {
			for _, f := range ws.files {
				// The clone has the image's file; the checkpoint's
				// replaces it.
				if err := os.Remove(filepath.Join(base, f)); err != nil && !os.IsNotExist(err) {
					return err
				}
				if _, err := snapshotter.CloneFile(filepath.Join(ws.dir, f), filepath.Join(base, f)); err != nil {
					return fmt.Errorf("cloning the checkpoint's disk file %s: %w", f, err)
				}
			}
		}
	} else {
		// A Linux guest without a disk: QEMU only reads its kernel and
		// initrd, and the image cannot be removed while the sandbox
		// uses it (imageInUse).
		base = img.BaseDir
	}
	spec, err := s.vmSpec(sb.ID, sb.Dir, base, img.Descriptor, cpus, mem)
	if err != nil {
		return err
	}
	if sb.Network != nil {
		spec.NICs = []vm.NIC{sb.Network.NIC}
	}
	for i, p := range store.SpecOf(*sb).NodeShares {
		// Exported as they are, not bound into the shared directory:
		// what the host mounts below them later (the tmpfs volumes of
		// runtime/nodevm/memvol) shows, and vz has no bind mounts.
		spec.Shares = append(spec.Shares, vm.Share{Tag: nodeShareTag(i), HostPath: p, Passthrough: true})
	}
	if sp := store.SpecOf(*sb); s.hasVolumeShare(sp) {
		vs, err := s.volumeShare(sb.ID, sb.Dir, &sp)
		if err != nil {
			return fmt.Errorf("the VM's volume share: %w", err)
		}
		spec.Shares = append(spec.Shares, vs)
	}
	// Saved now or restored: built from what the backend can save.
	spec.Savable = b.key != "" || b.restored
	if b.key != "" && spec.Boot.Kind == vm.BootMacOS && len(spec.Boot.MachineID) == 0 {
		// A fresh identity: saveWarm keeps it with the state.
		spec.Boot.MachineIDFile = filepath.Join(sb.Dir, "machine-id")
	}
	prevMAC := ""
	if ws != nil {
		spec.RestoreFrom = ws.stateFile()
		// A warm state's RAM file, never one in a checkpoint's copy: a
		// checkpoint is one stream, and what else its directory held came
		// from outside.
		if f, ok := ws.ramFile(); ok && !b.restored {
			spec.RestoreRAM = f
		}
		prevMAC = ws.meta.MAC
		if len(ws.meta.MachineID) > 0 {
			spec.Boot.MachineID, spec.Boot.MachineIDFile = ws.meta.MachineID, ""
		}
	}
	if err := prepareShare(sb.Dir); err != nil {
		return fmt.Errorf("preparing the VM's share: %w", err)
	}
	prepared := time.Since(start)
	// A cold boot is CPU work from the firmware to the agent (all of it
	// under TCG): past a boot per core they slow each other down more
	// than they overlap, so later ones wait their turn (bootTurn). A
	// restore is mostly reading its state: it does not wait.
	endTurn, queued := func() {}, time.Duration(0)
	if ws == nil {
		t := time.Now()
		release, err := s.bootTurn(ctx)
		if err != nil {
			return err
		}
		endTurn = sync.OnceFunc(release)
		defer endTurn()
		queued = time.Since(t)
	}
	c, err := s.shimProcs.Spawn(ctx, shim.SpawnOptions{
		Binary:   s.cfg.ShimBinary,
		Dir:      sb.Dir,
		Backend:  s.cfg.Backend,
		Spec:     spec,
		LogLevel: s.cfg.ShimLogLevel,
	})
	if err != nil {
		return fmt.Errorf("starting the VM's shim: %w", err)
	}
	s.addShim(sb.ID, c)
	spawned := time.Since(start)
	noAgent := store.SpecOf(*sb).NoAgent
	var resp *shimapi.StartResponse
	if noAgent {
		// Nothing to wait for and nothing to configure in the guest: it
		// takes its network from DHCP (vmnet's, socket_vmnet's; the pod IP
		// comes from the leases by MAC) and its name and resolver from its
		// own image. Its warm key is empty: it is never saved.
		resp, err = c.Shim().Start(ctx, &shimapi.StartRequest{NoAgent: true})
	} else {
		resp, err = c.Start(ctx, agentWait(ctx, s.cfg.BootTimeout))
	}
	if err != nil {
		if ws != nil {
			return fmt.Errorf("restoring the VM: %w", err)
		}
		return fmt.Errorf("booting the VM: %w", err)
	}
	booted := time.Since(start)
	endTurn()
	var saved time.Duration
	if ws == nil && b.key != "" && s.warm.begin(b.key) {
		t := time.Now()
		var err error
		// Saved with every module in: a VM restored from the state then
		// starts with an idle guest instead of loading them again, on
		// the vCPU its setup and first process need.
		waitGuestModules(ctx, log, c.Agent(), "saving the VM state")
		if rerr := reseedGuest(ctx, c.Agent()); rerr != nil {
			// Every restore of the state would fail its reseed and boot
			// cold again after all: save nothing.
			log.Warn("not saving the VM state for warm starts: its guest cannot be reseeded after a restore (an agent from before Reseed?)", "err", rerr)
		} else {
			err = s.saveWarm(ctx, c, b.key, spec, img, baseName, base)
		}
		saved = time.Since(t)
		s.warm.end(b.key)
		if err != nil {
			return err
		}
	}
	setupStart := time.Now()
	if !noAgent {
		if ws != nil {
			// First, before anything else runs in it: a restored guest
			// has the RNG state every VM restored from this state has.
			if err := reseedGuest(ctx, c.Agent()); err != nil {
				return err
			}
		}
		if err := s.setupGuest(ctx, c.Agent(), store.SpecOf(*sb), sb.Network, prevMAC, img.Descriptor.OS, true); err != nil {
			return err
		}
	}
	setup := time.Since(setupStart)
	rec, err = s.st.UpdateSandbox(sb.ID, func(r *store.Sandbox) error {
		r.Restore = nil
		b.recordBooted(r, bootKind(b, ws))
		return nil
	})
	if err != nil {
		return err
	}
	*sb = rec
	s.afterBoot(rec)
	if b.restored {
		// Resumed: the VM has its own disk clone now, and a restored
		// sandbox never resumes twice.
		if err := os.RemoveAll(ws.dir); err != nil {
			log.Warn("removing the checkpoint's copy", "err", err)
		}
	}
	how := "VM booted"
	switch {
	case b.restored:
		how = "VM resumed from a checkpoint"
	case ws != nil:
		how = "VM restored from a saved state"
	case noAgent:
		how = "VM running without an agent"
	}
	attrs := []any{"slot", b.slot, "cpus", cpus, "memoryMiB", mem >> 20, "image", img.Image.Name,
		"boot", time.Duration(resp.GetBootNs()), "started", booted.Round(time.Millisecond),
		"total", time.Since(start).Round(time.Millisecond), "kernel", resp.GetAgent().GetKernelRelease()}
	if queued >= time.Millisecond {
		attrs = append(attrs, "queued", queued.Round(time.Millisecond))
	}
	phases, modulesLoaded := bootPhases(prepared, spawned, booted, saved, setup, resp, ws == nil && !b.restored)
	log.Info(how, append(attrs, bootPhaseAttrs(phases, modulesLoaded)...)...)
	traceBootPhases(ctx, start, phases)
	return nil
}

// bootPhase is one part of a boot and how long it took.
type bootPhase struct {
	name string // as the log line names it, after "phase"
	d    time.Duration
}

// bootPhases names where a boot's time went, in the order it went there
// (each a duration, as the "VM booted" line gives them): preparing (the
// record, the disk clone, the spec), spawning the shim, the backend
// starting the VM, then, for a cold boot, "EarlyBoot" (the VM process
// until the guest's clock started: firmware, the kernel's decompression
// and early setup), on the guest's own clock the kernel until the agent's
// process ran and the agent's own start until its first line, and
// "Hello" from that line to the agent's first answer (the guest's
// channel drivers, the handshake, the first call). The first line is
// where a bare boot of the guest is timed to: the phases up to it are the
// guest's own boot, Hello and what follows are macvz's. When the backend
// did not see the line on the console, EarlyBoot is left out and Hello is
// the rest of the boot. Then the shim's own part of its Start; saving a
// warm state (an image's first cold boot); setting the guest up.
// modulesLoaded is the guest's uptime when it had every kernel module
// loaded (in the background: setup calls that need one wait), 0 when not
// known.
func bootPhases(prepared, spawned, booted, saved, setup time.Duration, resp *shimapi.StartResponse, cold bool) (phases []bootPhase, modulesLoaded time.Duration) {
	vmStart := time.Duration(resp.GetVmStartNs())
	boot := time.Duration(resp.GetBootNs())
	phases = []bootPhase{{"Prepare", prepared}, {"Shim", spawned - prepared}, {"VMStart", vmStart}}
	a := resp.GetAgent()
	if cold && a.GetStartedUptimeNs() > 0 && a.GetServingUptimeNs() >= a.GetStartedUptimeNs() {
		kernel, agentInit := time.Duration(a.GetStartedUptimeNs()), time.Duration(a.GetServingUptimeNs()-a.GetStartedUptimeNs())
		line := time.Duration(resp.GetAgentLineNs())
		if early := line - vmStart - kernel - agentInit; line > 0 && line <= boot && early >= 0 {
			phases = append(phases, bootPhase{"EarlyBoot", early}, bootPhase{"Kernel", kernel}, bootPhase{"AgentInit", agentInit},
				bootPhase{"Hello", boot - line})
		} else {
			phases = append(phases, bootPhase{"Kernel", kernel}, bootPhase{"AgentInit", agentInit},
				bootPhase{"Hello", max(boot-vmStart-kernel-agentInit, 0)})
		}
		modulesLoaded = time.Duration(a.GetModulesLoadedUptimeNs())
	} else {
		phases = append(phases, bootPhase{"Guest", max(boot-vmStart, 0)})
	}
	phases = append(phases, bootPhase{"ShimStart", max(booted-spawned-boot, 0)})
	if saved > 0 {
		phases = append(phases, bootPhase{"Save", saved})
	}
	return append(phases, bootPhase{"Setup", setup}), modulesLoaded
}

// bootPhaseAttrs are the phases as the "VM booted" line's attributes.
func bootPhaseAttrs(phases []bootPhase, modulesLoaded time.Duration) []any {
	ms := func(d time.Duration) string { return d.Round(100 * time.Microsecond).String() }
	out := make([]any, 0, 2*len(phases)+2)
	for _, p := range phases {
		out = append(out, "phase"+p.name, ms(p.d))
		if p.name == "Hello" && modulesLoaded > 0 {
			out = append(out, "modulesLoaded", ms(modulesLoaded))
		}
	}
	return out
}

// recordVM records in a sandbox which VM it boots and in which slot.
func (b *vmBoot) recordVM(r *store.Sandbox) {
	r.VMImage, r.VMContent, r.VMOS, r.VMSlot = b.img.Image.ID(), b.img.Content, b.img.Descriptor.OS, b.slot
}

// recordBooted records in a sandbox that its VM runs, how it came up
// (a boot kind) and its size.
func (b *vmBoot) recordBooted(r *store.Sandbox, kind string) {
	r.VMStarted = true
	r.VMCPUs, r.VMMemoryBytes, r.VMMemoryTarget, r.GuestCPUQuota = b.cpus, b.mem, 0, 0
	r.VMBoot, r.VMBootedAt = kind, time.Now()
	r.VMMinMemory = wholeMiB(b.img.Descriptor.MinMemoryBytes)
}

// endVM kills the shim and VM of dir, removes their sockets and, when
// disk is set, the disk clone: what a boot that failed, or a pooled VM
// given up, leaves.
func (s *Controller) endVM(ctx context.Context, dir, disk string, log *slog.Logger) {
	if err := s.shimProcs.Kill(ctx, dir); err != nil {
		log.Warn("killing the shim", "err", err)
	}
	removeVMSockets(dir)
	if disk != "" {
		if err := s.sn.Remove(ctx, disk); err != nil && !errdefs.IsNotFound(err) {
			log.Warn("removing the disk clone", "err", err)
		}
	}
}

// Boot kinds, as store.Sandbox.VMBoot records them.
const (
	BootCold       = "cold"
	BootWarm       = "warm"
	BootCheckpoint = "checkpoint"
	// BootPool: a VM of the warm pool (pool.go), restored before the
	// sandbox asked.
	BootPool = "pool"
)

// bootKind is how a boot brought its VM up: resumed from a pod
// checkpoint, restored from a saved warm state, or booted cold.
func bootKind(b *vmBoot, ws *warmState) string {
	switch {
	case b.restored:
		return BootCheckpoint
	case ws != nil:
		return BootWarm
	}
	return BootCold
}

// agentWait is how long a boot waits for the guest agent: the boot
// timeout, cut short of the caller's deadline so that a guest whose agent
// never answers fails with the shim's account of why (the last attempt's
// error, the console's end) rather than the caller's bare deadline.
func agentWait(ctx context.Context, bootTimeout time.Duration) time.Duration {
	dl, ok := ctx.Deadline()
	if !ok {
		return bootTimeout
	}
	left := time.Until(dl) - time.Second
	if left < time.Second {
		left = time.Second
	}
	return min(bootTimeout, left)
}

// moduleWait bounds how long the host waits for a guest's kernel modules
// (before its first cold boot's state is saved, before a memory resize).
const moduleWait = 30 * time.Second

// waitGuestModules waits until the guest has loaded every kernel module
// it lists (InfoRequest.wait_modules), for what it is about to do. A
// guest that takes longer, or an agent from before the field (which
// answers at once), goes on as it is: a state saved then has restores
// load the rest themselves, as every restore did before; a resize then
// fails as the balloon says.
func waitGuestModules(ctx context.Context, log *slog.Logger, a agentapi.AgentClient, what string) {
	ctx, cancel := context.WithTimeout(ctx, moduleWait)
	defer cancel()
	t := time.Now()
	r, err := a.Info(ctx, &agentapi.InfoRequest{WaitModules: true})
	if err != nil {
		log.Warn("the guest's kernel modules are not all loaded; going on", "for", what, "err", err, "waited", time.Since(t).Round(time.Millisecond))
		return
	}
	log.Debug("the guest's kernel modules are loaded", "for", what, "waited", time.Since(t).Round(time.Millisecond), "loadedUptime", time.Duration(r.GetModulesLoadedUptimeNs()))
}

// reseedGuest gives a restored guest's kernel RNG fresh host randomness
// and makes it reseed from it. A guest that cannot (an agent from before
// Reseed) fails the restore rather than run with random numbers other
// guests share: a warm start then boots cold, a checkpoint does not
// resume. A cold guest is asked once before its state is saved, so an
// image whose agent cannot is never saved at all.
func reseedGuest(ctx context.Context, a agentapi.AgentClient) error {
	seed := make([]byte, 64)
	if _, err := rand.Read(seed); err != nil {
		return fmt.Errorf("host randomness for the guest: %w", err)
	}
	if _, err := a.Reseed(ctx, &agentapi.ReseedRequest{Seed: seed}); err != nil {
		return fmt.Errorf("reseeding the restored guest's RNG: %w", err)
	}
	return nil
}

// setupGuest configures the guest's network from the sandbox's
// attachment (a restored guest's NIC still has prevMAC), applies the
// spec's hostname, sysctls and DNS config (the attachment's when the pod
// has none) and gives it the shared directories (mountShares: mounted
// when a container first binds a volume).
func (s *Controller) setupGuest(ctx context.Context, a agentapi.AgentClient, spec store.SandboxSpec, n *store.Network, prevMAC, guestOS string, shares bool) error {
	// The calls are independent: they go out at once, so a pod start
	// waits for the slowest, not for their sum (each is a round trip
	// through the emulated serial port).
	g, ctx := errgroup.WithContext(ctx)
	g.Go(func() error { return configureGuestNetwork(ctx, a, n, prevMAC) })
	if sc := spec.Sysctls; len(sc) > 0 {
		g.Go(func() error {
			if _, err := a.SetSysctls(ctx, &agentapi.SetSysctlsRequest{Sysctls: sc}); err != nil {
				return fmt.Errorf("applying the pod's sysctls in the guest: %w", err)
			}
			return nil
		})
	}
	if h := spec.Hostname; h != "" {
		g.Go(func() error {
			if _, err := a.SetHostname(ctx, &agentapi.SetHostnameRequest{Hostname: h}); err != nil {
				return fmt.Errorf("setting the guest's hostname: %w", err)
			}
			return nil
		})
	}
	var dns store.DNS
	if spec.DNS != nil {
		dns = *spec.DNS
	}
	if len(dns.Servers)+len(dns.Searches)+len(dns.Options) == 0 && n != nil {
		dns = n.DNS
	}
	if len(dns.Servers)+len(dns.Searches)+len(dns.Options) > 0 {
		g.Go(func() error {
			if _, err := a.WriteResolvConf(ctx, &agentapi.WriteResolvConfRequest{
				Nameservers: dns.Servers, Searches: dns.Searches, Options: dns.Options,
			}); err != nil {
				return fmt.Errorf("writing the guest's resolv.conf: %w", err)
			}
			return nil
		})
	}
	if shares {
		g.Go(func() error { return s.mountAllShares(ctx, a, spec, guestOS, true) })
	}
	return g.Wait()
}

// mountAllShares gives the guest the VM's shares (shareMounts), the
// calls at once. A pooled VM mounts them (not lazy) before its sandbox
// exists: their host side is the sandbox directory, which is the pooled
// VM's.
func (s *Controller) mountAllShares(ctx context.Context, a agentapi.AgentClient, spec store.SandboxSpec, guestOS string, lazy bool) error {
	g, ctx := errgroup.WithContext(ctx)
	for _, sh := range s.shareMounts(spec, guestOS) {
		g.Go(func() error { return s.mountShares(ctx, a, []shareMount{sh}, lazy) })
	}
	return g.Wait()
}

// stopVM stops a sandbox's VM (guest shutdown, hard stop after grace),
// records the exits of its running containers and ends its shim. A
// sandbox whose shim is already gone is fine. The caller holds the
// sandbox lock.
func (s *Controller) stopVM(ctx context.Context, sb store.Sandbox, grace time.Duration, reason string) error {
	log := sbLog(sb.ID)
	c, err := s.Shim(ctx, sb)
	switch {
	case err == nil:
		if _, err := c.Stop(ctx, grace); err != nil && !errdefs.IsUnavailable(err) {
			return fmt.Errorf("stopping the VM: %w", err)
		}
		s.recordExits(ctx, sb, c, reason)
		if err := c.Shutdown(ctx); err != nil && !errdefs.IsUnavailable(err) {
			log.Warn("shim shutdown", "err", err)
		}
		s.dropShim(sb.ID)
	case errdefs.IsFailedPrecondition(err):
		// No VM was ever started.
	default:
		log.Warn("the VM's shim does not answer; killing it", "err", err)
		s.dropShim(sb.ID)
		s.recordExits(ctx, sb, nil, reason)
	}
	// Kill whatever is left (a shim that did not exit, its VM process).
	if err := s.shimProcs.Kill(ctx, sb.Dir); err != nil {
		return fmt.Errorf("killing the VM's shim: %w", err)
	}
	removeVMSockets(sb.Dir)
	return unmountShared(sb.Dir)
}

// removeVMSockets removes the sockets and pid files a stopped VM and
// shim leave in the sandbox directory (the logs stay until the sandbox
// is removed).
func removeVMSockets(dir string) {
	for _, pat := range []string{"*.sock", "*.pid"} {
		ms, _ := filepath.Glob(filepath.Join(dir, pat))
		for _, m := range ms {
			os.Remove(m)
		}
	}
}

// recordExits marks a sandbox's running containers Exited, with the exit
// the shim recorded (from c, or its exit files when c is nil) or, when it
// has none, exit code 255 and reason.
func (s *Controller) recordExits(ctx context.Context, sb store.Sandbox, c shim.Conn, reason string) {
	cs, err := s.st.Containers(func(c *store.Container) bool {
		return c.SandboxID == sb.ID && c.State == store.ContainerRunning
	})
	if err != nil {
		sbLog(sb.ID).Warn("listing containers", "err", err)
		return
	}
	for _, ctr := range cs {
		ex := exitOf(ctx, sb.Dir, c, ctr.ID)
		if ctr.IsVM {
			// The VM itself: it ended because its VM stopped.
			ex = &Exit{Code: 0, Reason: "Completed", At: time.Now()}
			if reason != "" {
				ex = &Exit{Code: 255, Reason: "Error", Message: reason, At: time.Now()}
			}
		}
		if ex == nil {
			if reason == "" {
				reason = "the VM stopped"
			}
			ex = &Exit{Code: 255, Reason: "Error", Message: reason, At: time.Now()}
		}
		s.SetExited(ctr.ID, ex)
	}
}

// Exit is a container's recorded end.
type Exit struct {
	Code    int32
	Reason  string
	Message string
	At      time.Time
}

// exitOf is the exit the shim recorded for a container's main process,
// nil when none is (it still runs, or it was never watched).
func exitOf(ctx context.Context, dir string, c shim.Conn, cid string) *Exit {
	if c != nil {
		st, err := c.Shim().ProcessStatus(ctx, &shimapi.ProcessStatusRequest{ContainerId: cid})
		if err == nil && st.GetExit() != nil {
			e := st.GetExit()
			return &Exit{Code: e.GetExitCode(), Reason: e.GetReason(), Message: e.GetMessage(), At: time.Unix(0, e.GetFinishedUnixNano())}
		}
		if err == nil {
			return nil
		}
	}
	r, err := shim.ReadExit(dir, cid, "")
	if err != nil {
		return nil
	}
	return &Exit{Code: r.ExitCode, Reason: r.Reason, Message: r.Message, At: r.FinishedAt}
}

// SetExited moves a container to Exited (once).
func (s *Controller) SetExited(id string, ex *Exit) {
	rec, err := s.st.UpdateContainer(id, func(c *store.Container) error {
		if c.State == store.ContainerExited {
			return errNoChange
		}
		c.State = store.ContainerExited
		c.ExitCode = ex.Code
		c.Reason = ex.Reason
		c.Message = ex.Message
		c.FinishedAt = ex.At
		if c.FinishedAt.IsZero() {
			c.FinishedAt = time.Now()
		}
		// The exit time comes from the guest's clock, which the shim
		// keeps within milliseconds of the host's; a process that exits
		// at once must still not finish before it started.
		if c.FinishedAt.Before(c.StartedAt) {
			c.FinishedAt = c.StartedAt
		}
		return nil
	})
	if err != nil && !errors.Is(err, errNoChange) && !errdefs.IsNotFound(err) {
		slog.Warn("recording a container exit", "container", id, "err", err)
	}
	if err == nil {
		s.stopped(rec.SandboxID, id)
	}
}

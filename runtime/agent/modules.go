package agent

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// The guest's kernel modules (a Linux guest's, listed in its initramfs)
// load in the background while the agent serves: under TCG each costs
// 5–50 ms of the guest's only vCPU, so the order they load in and what
// waits for which decide how soon a pod's first process runs.
//
//   - The channel's modules (vsock, for a vz guest) first: New waits for
//     them (channelModules).
//   - Every other module in the list's order, except the late ones: the
//     drivers of the VM's devices (its disks, its RNG). StartProcess
//     waits for this group, while each setup call waits only for what it
//     uses (ConfigureNetwork the NIC's driver).
//   - The late ones (lateModules, and any module depending on one) only
//     once something needs them: drivers no process sees and only the
//     agent or the hypervisor uses, the shares' file systems (mounted when
//     a container first binds a volume), and the features a container's
//     process may ask for (overlay, the bridge, fuse), which the kernel's
//     request loads at once through the agent as its modprobe helper (see
//     Modprobe). Needing one (MountShare of 9p) loads it and what it
//     depends on, ahead of any early module still waiting; the host
//     asking for every module (Info wait_modules: before a VM's state is
//     saved for warm starts, before a memory resize) loads them all. A
//     guest that needs none never spends its vCPU on them.
//   - Of those, the power button's (timedModules) load the set's
//     lateDelay after the early group even when nothing needs them: the
//     stop's fallback must work without anyone asking.

// channelModules are the agent's own channel when it is vsock (a Linux
// guest of the vz backend, whose init arguments say --listen=vsock:PORT):
// the address family, and the virtio transport the host's connections
// come through. Debian builds them as modules, and the listener binds as
// soon as New returns: New waits for those of them the list has (so a
// list without them, a QEMU guest's, waits for nothing).
var channelModules = []string{"vsock", "vmw_vsock_virtio_transport_common", "vmw_vsock_virtio_transport"}

// lateModules load only when needed (but timedModules), and so does every
// listed module depending on one (its modules.dep line names one): the ACPI
// power button and its events (the agent's fallback for a stop when the
// Shutdown call cannot reach it), the memory balloon (QEMU's balloon
// target waits in the device until the driver reads it), the shares' file
// systems, 9p with its transport and caches (a QEMU guest's) and virtiofs
// (a vz guest's): the host registers its shares lazily and the agent
// mounts one when a container first binds a path of it, so a pod without
// volumes never loads them (under TCG the 9p group alone takes 140 ms of
// the vCPU). And what only a process may use, through a request of the
// kernel: overlay ("fs-overlay"), the bridge and its protocols ("bridge",
// "rtnl-link-bridge") and fuse (opening /dev/fuse, "fs-fuse"). Under TCG
// fuse, the bridge and overlay alone take 130-160 ms of the vCPU.
var lateModules = []string{"button", "evdev", "virtio_balloon",
	"9pnet", "9pnet_virtio", "netfs", "fscache", "9p", "virtiofs", "fuse",
	"overlay", "llc", "stp", "bridge"}

// timedModules are the late modules that load lateDelay after the early
// group whether needed or not (the power button: see the list above).
var timedModules = []string{"button", "evdev"}

// DefaultLateModules is how long the power button's modules wait after
// the early group, unless something needs a late module sooner.
const DefaultLateModules = 2 * time.Second

// shareModules are the modules MountShare waits for, by file system.
var shareModules = map[string][]string{
	"9p":       {"9pnet_virtio", "9p"},
	"virtiofs": {"virtiofs"},
}

// loadModuleFile loads one module (a variable for tests).
var loadModuleFile = loadModule

// moduleSet is the guest's module list and how far its loading is.
type moduleSet struct {
	// done has a channel for every listed module, closed once it is
	// loaded or failed to.
	done map[string]chan struct{}
	// channel closes when channelModules are done; early when every
	// module but the late ones is; all when every one is (never, unless
	// every late module is needed or there is none).
	channel, early, all chan struct{}
	// loaded is poked (non-blocking) after each module: a device the
	// serial port waits for may have appeared.
	loaded chan struct{}
	late   chan struct{} // closed (once) to load every late module now
	goLate func()
	// wanted are late modules something waits for (need), in the order
	// asked; wake is poked when one is added. The loader takes them
	// between two loads.
	wantMu sync.Mutex
	wanted []string
	wake   chan struct{}
	// allUptime is the guest's uptime when all closed (0 before).
	allUptime atomic.Int64
	// lines is the list in load order: the early modules (the first
	// nEarly), the timed ones (up to nTimed), the late ones on demand.
	lines          []string
	nEarly, nTimed int
	// deps are each listed module's dependencies, by name (modules.dep).
	deps map[string][]string
	// lateDelay is how long the timed modules wait after the early ones.
	lateDelay time.Duration
}

// noModules is a set with nothing to load (no list, a macOS guest, an
// agent that is not init): every wait returns at once.
func noModules() *moduleSet {
	m := newModuleSet(nil, nil, 0)
	close(m.channel)
	close(m.early)
	close(m.all)
	return m
}

// readModuleList is the list at path (one .ko path a line; '#'
// comments); a missing file is an empty list.
func readModuleList(log *slog.Logger, path string) []string {
	var lines []string
	err := eachLine(path, func(l string) error {
		lines = append(lines, l)
		return nil
	})
	if err != nil {
		if !errors.Is(err, os.ErrNotExist) {
			log.Warn("module list", "path", path, "err", err)
		}
		return nil
	}
	return lines
}

// newModuleSet orders lines for loading: the early modules, then the
// timed ones (which wait lateDelay), then the other late ones (lateModules
// and those whose deps, by module name, name one; they wait for a need),
// each group in the list's order.
func newModuleSet(lines []string, deps map[string][]string, lateDelay time.Duration) *moduleSet {
	m := &moduleSet{
		lateDelay: lateDelay, deps: deps,
		done:    map[string]chan struct{}{},
		channel: make(chan struct{}), early: make(chan struct{}), all: make(chan struct{}),
		loaded: make(chan struct{}, 1), late: make(chan struct{}), wake: make(chan struct{}, 1),
	}
	m.goLate = sync.OnceFunc(func() { close(m.late) })
	var timed, late []string
	for _, l := range lines {
		name := moduleName(l)
		if _, dup := m.done[name]; dup {
			continue
		}
		m.done[name] = make(chan struct{})
		switch {
		case slices.Contains(timedModules, name):
			timed = append(timed, l)
		case isLate(name, deps):
			late = append(late, l)
		default:
			m.lines = append(m.lines, l)
		}
	}
	m.nEarly = len(m.lines)
	m.lines = append(m.lines, timed...)
	m.nTimed = len(m.lines)
	m.lines = append(m.lines, late...)
	return m
}

// isLate says whether a module loads with the late ones.
func isLate(name string, deps map[string][]string) bool {
	if slices.Contains(lateModules, name) {
		return true
	}
	for _, d := range deps[name] {
		if slices.Contains(lateModules, d) {
			return true
		}
	}
	return false
}

// load loads the modules with loadModuleFile (a failure is logged and
// counts as done): the early ones in order, then the timed ones after
// lateDelay and every late one once goLate is called; a module something
// needs (wanted) goes first, after those of its dependencies not yet
// loaded. It records when the last one was done.
func (m *moduleSet) load(log *slog.Logger) {
	channelLeft := 0
	for name := range m.done {
		if slices.Contains(channelModules, name) {
			channelLeft++
		}
	}
	if channelLeft == 0 {
		close(m.channel)
	}
	start := time.Now()
	n, left := 0, len(m.lines)
	pending := make([]bool, len(m.lines))
	for i := range pending {
		pending[i] = true
	}
	// took is each module's load time, in load order, for the log: under
	// TCG the guest's only vCPU spends 3-30 ms on each, which a slow
	// boot's log should show without a debugger.
	var took []string
	loadLine := func(i int) {
		if !pending[i] {
			return
		}
		pending[i] = false
		left--
		line := m.lines[i]
		t := time.Now()
		err := loadModuleFile(line)
		took = append(took, moduleName(line)+"="+time.Since(t).Round(100*time.Microsecond).String())
		if err != nil {
			log.Warn("module not loaded", "module", line, "err", err)
		} else {
			n++
		}
		name := moduleName(line)
		close(m.done[name])
		// Each channel module is done once (newModuleSet drops repeats).
		if slices.Contains(channelModules, name) {
			if channelLeft--; channelLeft == 0 {
				close(m.channel)
			}
		}
		select {
		case m.loaded <- struct{}{}:
		default:
		}
	}
	// loadWanted loads what something waits for: each wanted module's
	// dependencies in the list, then it, in the list's order.
	loadWanted := func() {
		m.wantMu.Lock()
		wanted := m.wanted
		m.wanted = nil
		m.wantMu.Unlock()
		for _, w := range wanted {
			for i, line := range m.lines {
				if name := moduleName(line); pending[i] && (name == w || slices.Contains(m.deps[w], name)) {
					loadLine(i)
				}
			}
		}
	}
	for i := range m.nEarly {
		loadWanted()
		loadLine(i)
	}
	close(m.early)
	log.Info("modules loaded but the late ones", "count", n, "took", time.Since(start).Round(time.Millisecond), "each", strings.Join(took, " "))
	took = nil
	timer := time.NewTimer(m.lateDelay)
	defer timer.Stop()
	for left > 0 {
		loadWanted()
		if left == 0 {
			break
		}
		select {
		case <-timer.C:
			for i := m.nEarly; i < m.nTimed; i++ {
				loadWanted()
				loadLine(i)
			}
		case <-m.late:
			// Every pending line: none is left after this.
			for i := range m.lines {
				loadWanted()
				loadLine(i)
			}
		case <-m.wake:
		}
	}
	m.allUptime.Store(int64(uptime()))
	close(m.all)
	log.Info("modules loaded", "count", n, "took", time.Since(start).Round(time.Millisecond), "late", strings.Join(took, " "))
}

// need waits until the named modules are done; a name not in the list is
// not waited for. A late module needed loads now, with what it depends on.
func (m *moduleSet) need(ctx context.Context, names ...string) error {
	for _, name := range names {
		ch, ok := m.done[name]
		if !ok {
			continue
		}
		if m.isLate(name) && !closed(ch) {
			m.wantMu.Lock()
			m.wanted = append(m.wanted, name)
			m.wantMu.Unlock()
			select {
			case m.wake <- struct{}{}:
			default:
			}
		}
		if err := waitClosed(ctx, ch); err != nil {
			return err
		}
	}
	return nil
}

// closed says whether ch is closed, without waiting.
func closed(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

// isLate says whether the set loads name with the late modules.
func (m *moduleSet) isLate(name string) bool {
	return slices.ContainsFunc(m.lines[m.nEarly:], func(l string) bool { return moduleName(l) == name })
}

// needAll starts the late modules now and waits for every module.
func (m *moduleSet) needAll(ctx context.Context) error {
	m.goLate()
	return waitClosed(ctx, m.all)
}

// needEarly waits for every module but the late ones.
func (m *moduleSet) needEarly(ctx context.Context) error { return waitClosed(ctx, m.early) }

// whenDone waits, without starting the late modules, until those of
// names the list has are done.
func (m *moduleSet) whenDone(names ...string) {
	for _, n := range names {
		if ch, ok := m.done[n]; ok {
			<-ch
		}
	}
}

// waitClosed waits for ch to close; a closed ch wins over an ended ctx.
func waitClosed(ctx context.Context, ch <-chan struct{}) error {
	select {
	case <-ch:
		return nil
	default:
	}
	select {
	case <-ch:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// moduleName is a module's name from its .ko path.
func moduleName(path string) string {
	n := filepath.Base(path)
	n = strings.TrimSuffix(strings.TrimSuffix(n, ".xz"), ".ko")
	return strings.ReplaceAll(n, "-", "_")
}

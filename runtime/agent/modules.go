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
// 5–30 ms of the guest's only vCPU, so the order they load in and what
// waits for which decide how soon a pod's first process runs.
//
//   - The channel's modules (vsock, for a vz guest) first: New waits for
//     them (channelModules).
//   - Every other module in the list's order, except the late ones: the
//     drivers of the VM's devices (its disks, its RNG). StartProcess
//     waits for this group, while each setup call waits only for what it
//     uses (ConfigureNetwork the NIC's driver, MountShare its file
//     system's).
//   - The late ones (lateModules, and any module depending on one) only
//     once something needs one: drivers no process sees and only the
//     agent or the hypervisor uses, and the features a container's
//     process may ask for (overlay, the bridge, fuse), which the kernel's
//     request loads at once through the agent as its modprobe helper (see
//     Modprobe). Needing one (MountShare of virtiofs), or the host asking
//     for every module (Info wait_modules: before a VM's state is saved
//     for warm starts, before a memory resize), loads them all. A guest
//     that needs none never spends its vCPU on them.
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
// target waits in the device until the driver reads it), virtiofs (a vz
// guest's shares: MountShare needs it and loads it at once), and what
// only a process may use, through a request of the kernel: overlay
// ("fs-overlay"), the bridge and its protocols ("bridge",
// "rtnl-link-bridge") and fuse (opening /dev/fuse, "fs-fuse"). Under TCG
// fuse, the bridge and overlay alone take 130-160 ms of the vCPU.
var lateModules = []string{"button", "evdev", "virtio_balloon", "virtiofs", "fuse", "overlay", "llc", "stp", "bridge"}

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
	// a late module is needed or there is none).
	channel, early, all chan struct{}
	// loaded is poked (non-blocking) after each module: a device the
	// serial port waits for may have appeared.
	loaded chan struct{}
	late   chan struct{} // closed (once) to load every late module now
	goLate func()
	// allUptime is the guest's uptime when all closed (0 before).
	allUptime atomic.Int64
	// lines is the list in load order: the early modules (the first
	// nEarly), the timed ones (up to nTimed), the late ones on demand.
	lines          []string
	nEarly, nTimed int
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
		lateDelay: lateDelay,
		done:      map[string]chan struct{}{},
		channel:   make(chan struct{}), early: make(chan struct{}), all: make(chan struct{}),
		loaded: make(chan struct{}, 1), late: make(chan struct{}),
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

// load loads the modules in order with loadModuleFile (a failure is
// logged and counts as done), waiting before the timed and the late ones
// as the type's comment says, and records when the last one was done.
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
	n := 0
	for i, line := range m.lines {
		if i == m.nEarly {
			close(m.early)
			log.Info("modules loaded but the late ones", "count", n, "took", time.Since(start).Round(time.Millisecond))
			t := time.NewTimer(m.lateDelay)
			select {
			case <-t.C:
			case <-m.late:
				t.Stop()
			}
		}
		if i == m.nTimed {
			<-m.late
		}
		if err := loadModuleFile(line); err != nil {
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
	if m.nEarly == len(m.lines) {
		close(m.early)
	}
	m.allUptime.Store(int64(uptime()))
	close(m.all)
	log.Info("modules loaded", "count", n, "took", time.Since(start).Round(time.Millisecond))
}

// need waits until the named modules are done; a name not in the list is
// not waited for. Needing a late module starts the late ones now.
func (m *moduleSet) need(ctx context.Context, names ...string) error {
	for _, name := range names {
		ch, ok := m.done[name]
		if !ok {
			continue
		}
		if m.isLate(name) {
			m.goLate()
		}
		if err := waitClosed(ctx, ch); err != nil {
			return err
		}
	}
	return nil
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

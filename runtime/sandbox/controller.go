package sandbox

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"sync"
	"time"

	"github.com/containerd/errdefs"

	"github.com/macvz/macvz/internal/keyedlock"
	"github.com/macvz/macvz/netplugin/cnimgr"
	"github.com/macvz/macvz/netplugin/portproxy"
	"github.com/macvz/macvz/runtime/shim"
	"github.com/macvz/macvz/runtime/store"
	"github.com/macvz/macvz/runtime/vm"
	"github.com/macvz/macvz/snapshotter"
)

// Config is what the controller needs of the daemon's configuration.
type Config struct {
	// Backend is the VM driver the shims run: "qemu" or "vz".
	Backend string
	// StateDir holds one directory per sandbox (shim socket, VM spec,
	// logs, the share): StateDir/<id>.
	StateDir string
	// WarmDir holds saved VM states for warm starts; "" = warm start off.
	// WarmStates is how many are kept.
	WarmDir    string
	WarmStates int
	// WarmPool is how many VMs restored from each saved state are kept
	// ready (pool.go); 0 = none.
	WarmPool int
	// ShimBinary runs as `<ShimBinary> shim --dir`; "" = this executable.
	ShimBinary   string
	ShimLogLevel string
	// BootTimeout bounds boot-to-agent-ready.
	BootTimeout time.Duration
	// ConsoleLogMax is the size at which VM, QEMU and shim logs rotate.
	ConsoleLogMax int64
	// DefaultCPUs and DefaultMemoryBytes size a VM nothing else sizes.
	DefaultCPUs        int
	DefaultMemoryBytes int64
	// MaxLinuxVMs and MaxMacOSVMs bound the VMs of each guest OS at once
	// (0 = no bound).
	MaxLinuxVMs, MaxMacOSVMs int
	// MaxConcurrentBoots bounds the cold boots in progress at once (0 =
	// no bound); the next ones wait for a turn (bootTurn).
	MaxConcurrentBoots int
	// QEMU are the qemu backend's settings.
	QEMU vm.QEMUOptions
	// ImageMachineID boots macOS guests with their image's machine
	// identifier instead of a fresh one.
	ImageMachineID bool
	// VolumeRoots are the directories whose <pod UID>/volumes/*/* and
	// <pod UID>/containers a vz VM's volume share exports, on a host
	// without bind mounts (volumes.go).
	VolumeRoots []string
	// Recorder is told of boots, VM slots, warm states and shims for the
	// daemon's metrics (recorder.go); nil = nobody.
	Recorder Recorder
}

// Deps are the stores and managers the controller works with; the
// caller opens and closes them.
type Deps struct {
	Store       *store.Store
	Snapshotter *snapshotter.Snapshotter
	Network     *cnimgr.Manager
	Ports       *portproxy.Manager
	// Shims runs the VMs' shims; nil = runtime/shim's processes.
	Shims shim.Launcher
	// Stopped, when set, is told of each stop the controller records,
	// asked for or not (a VM or process that ended on its own): a
	// container that became Exited (its ID and its sandbox's), or a
	// sandbox that went from Ready to NotReady (containerID ""). It runs
	// on the goroutine that made the change, after the store has it,
	// possibly under the sandbox lock: it must be quick and must not call
	// the controller's lifecycle methods (cri's container events).
	Stopped func(sandboxID, containerID string)
	// Addressed, when set, is told when a ready sandbox's pod IPs become
	// known after its boot (learned from the guest or the DHCP leases),
	// under the same rules as Stopped.
	Addressed func(sandboxID string)
}

// Controller boots, stops and removes sandbox VMs. See the package
// comment.
type Controller struct {
	cfg   Config
	st    *store.Store
	sn    *snapshotter.Snapshotter
	net   *cnimgr.Manager
	ports *portproxy.Manager
	// shimProcs starts, finds and kills shims.
	shimProcs shim.Launcher

	// warm keeps saved VM states for warm starts; nil when off.
	warm *warmStore
	// pool keeps VMs restored from them ready (pool.go); nil when off.
	pool *warmPool
	// hostBinds: the host has bind mounts (Linux), through which a
	// volume of any container reaches the VM's shared directory; without
	// them a vz VM boots with its volume share (volumes.go).
	hostBinds bool

	// slots counts VM boots in progress per guest OS; slotsReserve
	// makes each reservation's check-and-take one step.
	slots        vmSlots
	slotsReserve sync.Mutex
	// boots holds a token per cold boot in progress (nil: no bound).
	boots chan struct{}

	// locks serialise lifecycle calls per sandbox ID.
	locks keyedlock.Locks[string]

	shimsMu  sync.Mutex
	shims    map[string]shim.Conn // sandbox ID → connected shim
	stopping map[string]bool      // sandboxes being stopped on purpose
	// warmHostOff is why this host saves no VM state ("": it can).
	warmHostOff string
	// stopped and addressed are Deps.Stopped and Deps.Addressed, or
	// no-ops.
	stopped   func(sandboxID, containerID string)
	addressed func(sandboxID string)
}

// New returns a controller over d and settles what the previous daemon
// left: it re-attaches to the shims that outlived it, removes half-made
// sandboxes, collects network attachments nobody owns and sweeps the
// saved states. Call it before anything else collects disk clones.
func New(ctx context.Context, cfg Config, d Deps) *Controller {
	s := &Controller{cfg: cfg, st: d.Store, sn: d.Snapshotter, net: d.Network, ports: d.Ports, shimProcs: d.Shims, shims: map[string]shim.Conn{}, hostBinds: hostBindMounts, stopped: d.Stopped, addressed: d.Addressed}
	if s.stopped == nil {
		s.stopped = func(string, string) {}
	}
	if s.addressed == nil {
		s.addressed = func(string) {}
	}
	if s.shimProcs == nil {
		s.shimProcs = shim.Processes{}
	}
	if cfg.MaxConcurrentBoots > 0 {
		s.boots = make(chan struct{}, cfg.MaxConcurrentBoots)
	}
	if cfg.WarmDir != "" {
		s.warm = newWarmStore(cfg.WarmDir, cfg.WarmStates, d.Snapshotter)
	}
	s.reconcile(ctx)
	s.sweepPool(ctx)
	s.collectNetworks(ctx)
	if s.warm != nil {
		s.warm.sweep(ctx)
		s.warmHostCheck()
	}
	if cfg.WarmPool > 0 && s.warm != nil && cfg.Backend == "qemu" {
		s.pool = newWarmPool(cfg.WarmPool)
		go s.runPool()
	}
	return s
}

// Close discards the pooled VMs and drops the connections to the shims.
// The sandboxes' shims and VMs keep running: the next daemon re-attaches.
func (s *Controller) Close() error {
	s.closePool()
	s.shimsMu.Lock()
	defer s.shimsMu.Unlock()
	var errs []error
	for id, c := range s.shims {
		errs = append(errs, c.Close())
		delete(s.shims, id)
	}
	return errors.Join(errs...)
}

// Lock serialises lifecycle calls on one sandbox (kubelet may start a
// pod's containers concurrently, and the first one boots the VM). The
// controller's methods that say "the caller holds the sandbox lock" need
// it held; the returned func releases it.
func (s *Controller) Lock(id string) (unlock func()) { return s.locks.Lock(id) }

// Dir is the state directory of a sandbox.
func (s *Controller) Dir(id string) string { return filepath.Join(s.cfg.StateDir, id) }

// diskKey is the snapshotter key of a sandbox's writable clone.
func diskKey(sandboxID string) string { return "macvz.sandbox/" + sandboxID }

// Shim returns the connected shim of a sandbox whose VM runs; a sandbox
// whose VM never started is FailedPrecondition.
func (s *Controller) Shim(ctx context.Context, sb store.Sandbox) (shim.Conn, error) {
	s.shimsMu.Lock()
	defer s.shimsMu.Unlock()
	if c := s.shims[sb.ID]; c != nil {
		return c, nil
	}
	if !sb.VMStarted {
		return nil, fmt.Errorf("sandbox %s has no running VM yet: %w", sb.ID, errdefs.ErrFailedPrecondition)
	}
	c, err := s.shimProcs.Connect(ctx, sb.Dir)
	if err != nil {
		return nil, err
	}
	s.shims[sb.ID] = c
	s.rec().ShimReconnected(ShimReconnect)
	return c, nil
}

// connectedShim is the shim already connected for a sandbox, or nil.
func (s *Controller) connectedShim(id string) shim.Conn {
	s.shimsMu.Lock()
	defer s.shimsMu.Unlock()
	return s.shims[id]
}

func (s *Controller) addShim(id string, c shim.Conn) {
	s.shimsMu.Lock()
	s.shims[id] = c
	s.shimsMu.Unlock()
}

func (s *Controller) dropShim(id string) {
	s.shimsMu.Lock()
	defer s.shimsMu.Unlock()
	if c := s.shims[id]; c != nil {
		c.Close()
		delete(s.shims, id)
	}
}

// setStopping marks a sandbox whose VM is being stopped on purpose, so a
// concurrent refresh does not report the stop as the VM dying.
func (s *Controller) setStopping(id string, on bool) {
	s.shimsMu.Lock()
	defer s.shimsMu.Unlock()
	if s.stopping == nil {
		s.stopping = map[string]bool{}
	}
	if on {
		s.stopping[id] = true
	} else {
		delete(s.stopping, id)
	}
}

func (s *Controller) isStopping(id string) bool {
	s.shimsMu.Lock()
	defer s.shimsMu.Unlock()
	return s.stopping[id]
}

// InUse reports whether a sandbox's VM was booted from an image ID.
func (s *Controller) InUse(imageID string) bool {
	sbs, err := s.st.Sandboxes(func(sb *store.Sandbox) bool { return sb.VMImage == imageID })
	return err != nil || len(sbs) > 0
}

func sbLog(id string) *slog.Logger { return slog.With("sandbox", id) }

// errNoChange aborts a store update that has nothing to do (the record
// already moved on).
var errNoChange = errors.New("no change")

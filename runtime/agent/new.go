package agent

import (
	"errors"
	"io"
	"log/slog"
	"os"
	"time"

	"github.com/containerd/ttrpc"

	api "github.com/macvz/macvz/runtime/agentapi"
)

// Options say what an Agent owns and where it writes.
type Options struct {
	// EtcDir is where hostname and resolv.conf are written ("/etc" when
	// empty).
	EtcDir string
	// System lets the agent change the machine: the kernel hostname,
	// network interfaces, mounts, power (Shutdown). Off when the agent
	// runs on a host, in tests.
	System bool
	// Init: the agent is the guest's init (PID 1). New mounts the
	// pseudo file systems, sets PATH, loads the kernel modules listed in
	// Modules in the background (returning once those of a vsock
	// channel, when listed, are in), and watches the ACPI power button;
	// the agent reaps every process. At most one such Agent per process.
	Init bool
	// Modules is the file listing the kernel modules to load, one .ko
	// path a line (Init only; a missing file loads nothing).
	Modules string
	// LateModules is how long the power button's modules (the timed
	// late modules, see lateModules) wait after the early ones unless a
	// late module is needed sooner (Init only; zero: right after them;
	// the agent's flag defaults to DefaultLateModules).
	LateModules time.Duration
	// Subreaper makes the process a child subreaper whose agent reaps
	// every descendant (implied by Init; Linux only).
	Subreaper bool
	// Version is what Ping and Info report ("dev" when empty).
	Version string
	// Log is the agent's log (slog.Default() when nil).
	Log *slog.Logger
	// SocketDir is where PortForward's listen may make unix sockets
	// (DefaultSocketDir when empty).
	SocketDir string
	// ExecHelper is the guest's exec helper (cmd/macvz-exec), the
	// program each restricted process starts through (Linux). New
	// copies it into sealed memory, so that nothing a container does to
	// the file reaches later processes; a missing file, or "", leaves
	// the agent re-executing itself, which starts slower (its packages'
	// initialisation; under TCG tens of milliseconds a process).
	ExecHelper string
}

// channelWait bounds how long New waits for the agent channel's modules.
const channelWait = 10 * time.Second

// Agent is the guest agent: the runtime/agentapi service, ready to be
// registered on a ttrpc server.
type Agent struct {
	a   *agent
	log *slog.Logger
}

// New sets the guest up as opts say (see Options.Init) and returns its
// agent.
func New(opts Options) (*Agent, error) {
	started := uptime()
	log := opts.Log
	if log == nil {
		log = slog.Default()
	}
	mods := noModules()
	if opts.Init {
		initMounts(log)
		mountFstab(log, "/etc/fstab")
		os.Setenv("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
		// The index (modules.dep) says which listed modules depend on a
		// late one; an image without it still loads its list.
		dir := modulesDir()
		ix, err := readModuleIndex(dir)
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			log.Warn("module index", "dir", dir, "err", err)
		}
		if ix != nil {
			onDemandModules(log, dir)
		}
		mods = newModuleSet(readModuleList(log, opts.Modules), ix.depNames(), opts.LateModules)
		go mods.load(log)
		// A vsock listener (vz guests) binds right after New: its
		// address family must be there (channelModules).
		select {
		case <-mods.channel:
		case <-time.After(channelWait):
			log.Warn("the vsock modules are still loading; the agent's listener may fail", "waited", channelWait)
		}
	} else if opts.Subreaper {
		if err := setSubreaper(); err != nil {
			return nil, err
		}
	}
	hostileStart(log) // test guests only (the hostile build tag)
	cfg := config{
		etcDir:        opts.EtcDir,
		system:        opts.System,
		pid1:          opts.Init,
		centralReaper: opts.Init || opts.Subreaper,
		log:           log,
		version:       opts.Version,
		socketDir:     opts.SocketDir,
	}
	if opts.System {
		cfg.powerOff = powerOff
		cfg.setClock = setClock
	}
	if opts.ExecHelper != "" {
		p, err := loadExecHelper(opts.ExecHelper)
		switch {
		case err == nil:
			cfg.execHelper = p
		case errors.Is(err, os.ErrNotExist):
			log.Info("no exec helper in this guest: processes start through the agent itself", "path", opts.ExecHelper)
		default:
			log.Warn("the exec helper could not be loaded: processes start through the agent itself", "path", opts.ExecHelper, "err", err)
		}
	}
	a := newAgent(cfg)
	a.mods, a.startedUptime = mods, started
	if opts.Init {
		go func() {
			// Late modules: the stop's fallback, not worth loading early.
			mods.whenDone("button", "evdev")
			watchPowerButton(log, func() {
				log.Info("power button pressed")
				a.shutdown(false, 3*time.Second)
			})
		}()
	}
	return &Agent{a: a, log: log}, nil
}

// Register registers the agent's service (runtime/agentapi) on srv.
func (a *Agent) Register(srv *ttrpc.Server) {
	api.RegisterAgentService(srv, a.a)
	// Serve comes next: the guest's boot is done as far as the agent
	// can tell (Info reports it).
	a.a.servingUptime.Store(int64(uptime()))
}

// SerialPort returns an opener of the virtio-serial port named name (QEMU
// guests), for runtime/agentapi.NewLinkListener: it waits up to 2s for
// the port to appear, the kernel modules loading meanwhile. On macOS
// guests it always fails.
func (a *Agent) SerialPort(name string) func() (io.ReadWriteCloser, error) {
	return hostilePort(a.log, openVirtioPort(a.log, name, a.a.mods.loaded))
}

// PowerOff powers the machine off (or restarts it) at once, stopping no
// process first: what init does when the agent cannot run, as init must
// not exit.
func PowerOff(reboot bool) { powerOff(reboot) }

// ExecHelperArg is the first argument of the agent's binary re-executed
// as the exec helper (/proc/self/exe ExecHelperArg ...): its main calls
// RunExecHelper(os.Args[2:]) when it sees it, before anything else.
const ExecHelperArg = execHelperArg

// RunExecHelper is the exec helper: it sets up the mount namespace,
// capabilities, user and no_new_privs of a process and execs it, on the
// arguments that followed ExecHelperArg. It never returns (Linux only: on
// macOS it exits 127).
func RunExecHelper(args []string) { execHelper(args) }

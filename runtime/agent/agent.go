// Package agent is macvz's guest agent. It runs inside each sandbox VM,
// never on the host: as the guest's init (PID 1) on Linux QEMU guests,
// as a launchd daemon on macOS guests. It serves the ttrpc service of
// runtime/agentapi to the host: it creates, starts, signals and waits for
// the containers' processes (re-executing its own binary as the exec
// helper for capabilities, users and mount namespaces) and buffers their
// output for the host to read, mounts the shares, configures the network,
// hostname and resolv.conf, sets sysctls, reports stats, forwards ports,
// and powers the machine off. As init it also mounts the pseudo file
// systems, loads the kernel modules and reaps every process.
//
// cmd/macvz-agent is the binary: flags, logging and the listener over
// New and Register. Built with the `hostile` tag (test guests only), the
// agent attacks the host (hostile.go).
package agent

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/macvz/macvz/internal/atomicfile"
	api "github.com/macvz/macvz/runtime/agentapi"
)

// config is what the agent acts on.
type config struct {
	// etcDir is where hostname and resolv.conf are written ("/etc").
	etcDir string
	// system lets the agent change the machine: the kernel hostname,
	// network interfaces, mounts, power. Off when testing on a host.
	system bool
	// pid1: the agent is the guest's init.
	pid1 bool
	// central reaping: wait4(-1) for every child (init, subreaper).
	centralReaper bool
	// powerOff powers the machine off or reboots it (system only).
	powerOff func(reboot bool)
	// setClock sets the machine's clock from the host's (system only):
	// a ping carries the host's time, and a VM restored from a saved
	// state wakes with the clock of the moment it was saved.
	setClock func(time.Time) error
	// mountRoot, when set, mounts a share's root instead of
	// mountShareRoot (tests: the agent's own bookkeeping around it).
	mountRoot func(context.Context, *api.MountShareRequest) error
	log       *slog.Logger
	// version is what Ping and Info report ("dev").
	version string
	// socketDir holds the unix sockets PortForward's listen makes
	// (DefaultSocketDir).
	socketDir string
	// kubeletPluginDir is kubelet's device-plugin directory, where
	// PortForward may also listen (api.KubeletPluginDir), and
	// kubeletSockets the guest sockets it may dial
	// (api.KubeletSockets); tests move them.
	kubeletPluginDir string
	kubeletSockets   []string
	// execHelper is the path a process's exec helper runs from (see
	// loadExecHelper); "" is the agent re-executed, /proc/self/exe.
	execHelper string
}

// agent implements api.AgentService.
type agent struct {
	cfg    config
	start  time.Time
	reaper reaper
	// mods are the guest's kernel modules as they load (modules.go):
	// the calls that need one wait for it.
	mods *moduleSet

	mu    sync.Mutex
	procs map[procKey]*process
	// shares are the shares MountShare mounted or recorded (lazy), by
	// tag: the sources of later subpath binds.
	shares map[string]*share
	// shareMu is held while a lazy share's root is mounted, and by
	// UnmountShare.
	shareMu sync.Mutex
	// listeners are PortForward's guest sockets, by listen address.
	listeners map[string]*guestListener

	shutdownOnce sync.Once

	// The guest's boot on its own clock (uptime): when New ran, when
	// the agent served (when every module was loaded: mods).
	startedUptime time.Duration
	servingUptime atomic.Int64
}

var _ api.AgentService = (*agent)(nil)

func newAgent(cfg config) *agent {
	if cfg.etcDir == "" {
		cfg.etcDir = "/etc"
	}
	if cfg.log == nil {
		cfg.log = slog.Default()
	}
	if cfg.version == "" {
		cfg.version = "dev"
	}
	if cfg.socketDir == "" {
		cfg.socketDir = DefaultSocketDir
	}
	if cfg.kubeletPluginDir == "" {
		cfg.kubeletPluginDir = api.KubeletPluginDir
	}
	if cfg.kubeletSockets == nil {
		cfg.kubeletSockets = api.KubeletSockets
	}
	a := &agent{cfg: cfg, start: time.Now(), procs: map[procKey]*process{}, shares: map[string]*share{}, listeners: map[string]*guestListener{}, mods: noModules()}
	if cfg.centralReaper {
		a.reaper = newCentralReaper(cfg.log)
	} else {
		a.reaper = pidReaper{}
	}
	return a
}

func errf(c codes.Code, format string, args ...any) error {
	return status.Errorf(c, format, args...)
}

// osErr classifies an error from the OS for the host.
func osErr(c codes.Code, err error, format string, args ...any) error {
	if _, ok := status.FromError(err); ok && err != nil {
		if s, _ := status.FromError(err); s.Code() != codes.Unknown {
			return err
		}
	}
	switch {
	case os.IsNotExist(err):
		c = codes.NotFound
	case os.IsPermission(err):
		c = codes.PermissionDenied
	}
	return status.Errorf(c, "%s: %v", fmt.Sprintf(format, args...), err)
}

func (a *agent) Ping(ctx context.Context, req *api.PingRequest) (*api.PingResponse, error) {
	if t := req.GetHostTimeUnixNano(); t != 0 && a.cfg.setClock != nil {
		host := time.Unix(0, t)
		if d := time.Since(host); d > clockSlack || d < -clockSlack {
			if err := a.cfg.setClock(host); err != nil {
				a.cfg.log.Warn("setting the clock from the host", "err", err)
			} else {
				a.cfg.log.Debug("clock set from the host", "offset", d)
			}
		}
	}
	return &api.PingResponse{AgentVersion: a.cfg.version}, nil
}

// clockSlack is how far the guest's clock may be from the host's before
// a ping sets it.
const clockSlack = 20 * time.Millisecond

func (a *agent) Info(ctx context.Context, req *api.InfoRequest) (*api.InfoResponse, error) {
	if req.GetWaitModules() {
		if err := a.mods.needAll(ctx); err != nil {
			return nil, errf(codes.DeadlineExceeded, "the guest's kernel modules are still loading")
		}
	}
	host, _ := os.Hostname()
	r := &api.InfoResponse{
		AgentVersion:       a.cfg.version,
		Os:                 runtime.GOOS,
		Arch:               runtime.GOARCH,
		Hostname:           host,
		AgentStartUnixNano: a.start.UnixNano(),
		Pid1:               a.cfg.pid1,
		NumCpu:             uint32(runtime.NumCPU()),
	}
	sysInfo(r)
	r.StartedUptimeNs, r.ServingUptimeNs = int64(a.startedUptime), a.servingUptime.Load()
	r.ModulesLoadedUptimeNs = a.mods.allUptime.Load()
	if !req.GetSkipInterfaces() {
		r.Interfaces = hostileInterfaces(interfaces())
	}
	return r, nil
}

// interfaces lists the guest's network interfaces and addresses (Go's
// portable view: the same on Linux and macOS guests).
func interfaces() []*api.NetInterface {
	ifs, err := net.Interfaces()
	if err != nil {
		return nil
	}
	out := make([]*api.NetInterface, 0, len(ifs))
	for _, ifc := range ifs {
		ni := &api.NetInterface{Name: ifc.Name, Mac: ifc.HardwareAddr.String(), Up: ifc.Flags&net.FlagUp != 0}
		addrs, _ := ifc.Addrs()
		for _, a := range addrs {
			if ipn, ok := a.(*net.IPNet); ok {
				ni.Addresses = append(ni.Addresses, ipn.String())
			}
		}
		out = append(out, ni)
	}
	return out
}

func validHostname(h string) bool {
	if h == "" || len(h) > 64 {
		return false
	}
	for _, c := range h {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '.' || c == '_') {
			return false
		}
	}
	return true
}

func (a *agent) SetHostname(ctx context.Context, req *api.SetHostnameRequest) (*api.SetHostnameResponse, error) {
	if !validHostname(req.Hostname) {
		return nil, errf(codes.InvalidArgument, "invalid hostname %q", req.Hostname)
	}
	if a.cfg.system {
		if err := setKernelHostname(req.Hostname); err != nil {
			return nil, osErr(codes.Internal, err, "setting the hostname to %q", req.Hostname)
		}
	}
	if err := a.writeEtc("hostname", []byte(req.Hostname+"\n")); err != nil {
		return nil, osErr(codes.Internal, err, "writing hostname")
	}
	a.cfg.log.Info("hostname set", "hostname", req.Hostname)
	return &api.SetHostnameResponse{}, nil
}

func (a *agent) WriteResolvConf(ctx context.Context, req *api.WriteResolvConfRequest) (*api.WriteResolvConfResponse, error) {
	var b strings.Builder
	b.WriteString("# written by macvz-agent\n")
	for _, s := range [][]string{req.Nameservers, req.Searches, req.Options} {
		for _, v := range s {
			if v == "" || strings.ContainsAny(v, " \t\r\n#;") {
				return nil, errf(codes.InvalidArgument, "invalid resolv.conf value %q", v)
			}
		}
	}
	if handled, err := systemDNS(ctx, a, req); handled || err != nil {
		if err != nil {
			return nil, err
		}
		return &api.WriteResolvConfResponse{}, nil
	}
	for _, ns := range req.Nameservers {
		fmt.Fprintf(&b, "nameserver %s\n", ns)
	}
	if len(req.Searches) > 0 {
		fmt.Fprintf(&b, "search %s\n", strings.Join(req.Searches, " "))
	}
	if len(req.Options) > 0 {
		fmt.Fprintf(&b, "options %s\n", strings.Join(req.Options, " "))
	}
	if err := a.writeEtc("resolv.conf", []byte(b.String())); err != nil {
		return nil, osErr(codes.Internal, err, "writing resolv.conf")
	}
	return &api.WriteResolvConfResponse{}, nil
}

func (a *agent) Shutdown(ctx context.Context, req *api.ShutdownRequest) (*api.ShutdownResponse, error) {
	if !a.cfg.system || a.cfg.powerOff == nil {
		return nil, errf(codes.FailedPrecondition, "the agent does not own this machine (not started as init or with --system)")
	}
	grace := time.Duration(req.GracePeriodMs) * time.Millisecond
	if grace == 0 {
		grace = 3 * time.Second
	}
	a.cfg.log.Info("shutdown requested", "reboot", req.Reboot, "grace", grace)
	go func() {
		// Let the answer leave first.
		time.Sleep(50 * time.Millisecond)
		a.shutdown(req.Reboot, grace)
	}()
	return &api.ShutdownResponse{}, nil
}

// shutdown stops every process (SIGTERM, SIGKILL after grace) and powers
// the machine off or restarts it; only the first call does anything.
func (a *agent) shutdown(reboot bool, grace time.Duration) {
	a.shutdownOnce.Do(func() {
		a.stopAll(grace)
		if a.cfg.powerOff != nil {
			a.cfg.powerOff(reboot)
		}
	})
}

// writeEtc replaces a file of the guest's /etc (hostname, resolv.conf)
// whole: a process reading it never sees half of it.
func (a *agent) writeEtc(name string, data []byte) error {
	if err := os.MkdirAll(a.cfg.etcDir, 0o755); err != nil {
		return err
	}
	return atomicfile.WriteFile(filepath.Join(a.cfg.etcDir, name), data, 0o644)
}

// execHelperPath is what a process's exec helper runs.
func (c *config) execHelperPath() string {
	if c.execHelper != "" {
		return c.execHelper
	}
	return "/proc/self/exe"
}

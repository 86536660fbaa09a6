package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"

	api "github.com/macvz/macvz/runtime/agentapi"
)

// The macOS guest side. launchd is the guest's init; the agent changes
// the machine the way an administrator does, through the system tools
// (scutil, networksetup, ifconfig, route, sysctl, mount_virtiofs,
// shutdown), whose output is parsed by the tested code in macos_tools.go.

// setKernelHostname sets the macOS host name the way the system tools do.
func setKernelHostname(h string) error {
	out, err := exec.Command("/usr/sbin/scutil", "--set", "HostName", h).CombinedOutput()
	if err != nil {
		return fmt.Errorf("scutil --set HostName: %v: %s", err, out)
	}
	return nil
}

func sysInfo(r *api.InfoResponse) {
	if u, err := unix.Sysctl("kern.osrelease"); err == nil {
		r.KernelRelease = u
	}
	if v, err := unix.Sysctl("kern.version"); err == nil {
		r.KernelVersion = v
	}
	if tv, err := unix.SysctlTimeval("kern.boottime"); err == nil {
		r.BootTimeUnixNano = tv.Nano()
	}
	if m, err := unix.SysctlUint64("hw.memsize"); err == nil {
		r.MemoryTotalBytes = m
	}
}

// UnmountShare on macOS: not needed (vz saves a VM with its virtiofs
// shares mounted), so not offered.
func (a *agent) UnmountShare(ctx context.Context, req *api.UnmountShareRequest) (*api.UnmountShareResponse, error) {
	return nil, errf(codes.Unimplemented, "UnmountShare: macOS guests keep their shares mounted across a save")
}

// MountShare on macOS: virtiofs only (macOS guests have no 9p), mounted
// with mount_virtiofs(8) (macOS 13+ guests). A subpath cannot be bound
// (macOS has no bind mounts): it becomes a symlink at the target into
// the mounted share, so read_only cannot be enforced for it.
func (a *agent) MountShare(ctx context.Context, req *api.MountShareRequest) (*api.MountShareResponse, error) {
	if req.Tag == "" || !filepath.IsAbs(req.Target) {
		return nil, errf(codes.InvalidArgument, "MountShare needs a tag and an absolute target (got %q, %q)", req.Tag, req.Target)
	}
	if !a.cfg.system {
		return nil, errf(codes.FailedPrecondition, "MountShare: the agent does not own this machine")
	}
	if req.Subpath != "" {
		return a.linkShare(ctx, req)
	}
	if _, err := shareArgs(req); err != nil {
		return nil, err
	}
	return a.rootShare(ctx, req)
}

// shareArgs are mount_virtiofs's arguments for a share's root.
func shareArgs(req *api.MountShareRequest) ([]string, error) {
	if req.Fstype != "virtiofs" {
		return nil, errf(codes.InvalidArgument, "MountShare: macOS guests mount virtiofs shares, not %q", req.Fstype)
	}
	args := []string{}
	if req.ReadOnly {
		args = append(args, "-o", "rdonly") // mount(8)'s name for read-only
	}
	for _, o := range req.Options {
		if o == "" || strings.ContainsAny(o, ", ") {
			return nil, errf(codes.InvalidArgument, "MountShare: invalid option %q", o)
		}
		args = append(args, "-o", o)
	}
	return append(args, req.Tag, req.Target), nil
}

// mountShareRoot mounts a checked request's share at its target.
func (a *agent) mountShareRoot(ctx context.Context, req *api.MountShareRequest) error {
	args, err := shareArgs(req)
	if err != nil {
		return err
	}
	if req.CreateTarget {
		if err := os.MkdirAll(req.Target, 0o755); err != nil {
			return osErr(codes.Internal, err, "creating mount point %s", req.Target)
		}
	}
	if out, err := exec.CommandContext(ctx, "/sbin/mount_virtiofs", args...).CombinedOutput(); err != nil {
		return errf(codes.Internal, "mounting virtiofs share %q on %s: %v: %s", req.Tag, req.Target, err, strings.TrimSpace(string(out)))
	}
	return nil
}

// linkShare makes req.Target a symlink to a path inside a mounted share.
func (a *agent) linkShare(ctx context.Context, req *api.MountShareRequest) (*api.MountShareResponse, error) {
	_, src, err := a.shareSubpath(ctx, req)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(filepath.Dir(req.Target), 0o755); err != nil {
		return nil, osErr(codes.Internal, err, "creating the parent of %s", req.Target)
	}
	if err := clearLinkTarget(req.Target); err != nil {
		return nil, errf(codes.FailedPrecondition, "MountShare: %v", err)
	}
	if err := os.Symlink(src, req.Target); err != nil {
		return nil, osErr(codes.Internal, err, "linking %s to %s", req.Target, src)
	}
	if req.ReadOnly {
		a.cfg.log.Warn("a read-only volume is a symlink on macOS guests: not enforced read-only", "target", req.Target)
	}
	return &api.MountShareResponse{}, nil
}

func initMounts(log *slog.Logger) {}

// mountFstab: a macOS guest mounts its own file systems.
func mountFstab(log *slog.Logger, path string) {}

// loadModule: a macOS guest lists no modules (readModuleList finds no
// file), so nothing calls it.
func loadModule(path string) error {
	return errors.New("kernel modules are a Linux guest's")
}

// A macOS guest has no kernel modules of ours: no index, no helper.
func modulesDir() string                           { return "" }
func kmsg(line string)                             {}
func onDemandModules(log *slog.Logger, dir string) {}

func openVirtioPort(log *slog.Logger, name string, loaded <-chan struct{}) func() (io.ReadWriteCloser, error) {
	return func() (io.ReadWriteCloser, error) {
		return nil, errors.New("virtio-serial ports are not supported on macOS guests")
	}
}

func watchPowerButton(log *slog.Logger, press func()) {}

func setSubreaper() error { return errors.New("no subreapers on macOS") }

// powerOff asks macOS to shut down (or restart) the way an administrator
// does: a stop request from the host would show a dialog in the guest.
func powerOff(reboot bool) {
	how := "-h"
	if reboot {
		how = "-r"
	}
	if out, err := exec.Command("/sbin/shutdown", how, "now").CombinedOutput(); err != nil {
		slog.Error("shutdown failed", "err", err, "out", string(out))
	}
}

// setClock sets the system clock with settimeofday(2) (root only, as
// the agent's launchd job runs). A macOS guest restored from a saved
// state wakes with the clock of the moment it was saved; the host's
// shim sends its time with the first ping of every connection, so the
// clock is right before the restored guest runs anything.
func setClock(t time.Time) error {
	tv := unix.NsecToTimeval(t.UnixNano())
	return unix.Settimeofday(&tv)
}

// runTool runs a system tool and returns its combined output.
func runTool(ctx context.Context, tool string, args ...string) (string, error) {
	out, err := exec.CommandContext(ctx, tool, args...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("%s %s: %v: %s", filepath.Base(tool), strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return string(out), nil
}

var toolPaths = map[string]string{
	"networksetup": "/usr/sbin/networksetup",
	"ifconfig":     "/sbin/ifconfig",
	"route":        "/sbin/route",
	"sysctl":       "/usr/sbin/sysctl",
	"ps":           "/bin/ps",
	"vm_stat":      "/usr/bin/vm_stat",
	"netstat":      "/usr/sbin/netstat",
}

func networkServices(ctx context.Context) ([]netService, error) {
	out, err := runTool(ctx, toolPaths["networksetup"], "-listnetworkserviceorder")
	if err != nil {
		return nil, err
	}
	return parseServiceOrder(out), nil
}

// systemDNS gives the machine's network services the pod's DNS servers
// and search domains: macOS resolvers ignore /etc/resolv.conf (configd
// writes it from the services' configuration). Resolver options (ndots)
// have no place there and are logged, not applied.
func systemDNS(ctx context.Context, a *agent, req *api.WriteResolvConfRequest) (bool, error) {
	if !a.cfg.system {
		return false, nil
	}
	svcs, err := networkServices(ctx)
	if err != nil {
		return true, errf(codes.Internal, "listing network services: %v", err)
	}
	cmds, err := dnsCommands(svcs, req.Nameservers, req.Searches)
	if err != nil {
		return true, errf(codes.InvalidArgument, "%v", err)
	}
	if len(cmds) == 0 {
		return true, errf(codes.FailedPrecondition, "no enabled network service with a device to give DNS servers to")
	}
	for _, c := range cmds {
		if _, err := runTool(ctx, toolPaths["networksetup"], c...); err != nil {
			return true, errf(codes.Internal, "setting DNS: %v", err)
		}
	}
	if len(req.Options) > 0 {
		a.cfg.log.Warn("resolver options are not applied on macOS guests", "options", req.Options)
	}
	a.cfg.log.Info("DNS set", "servers", req.Nameservers, "searches", req.Searches)
	return true, nil
}

// ConfigureNetwork on macOS: loopback is always up; interfaces are found
// by MAC and configured through their network service (see networkPlan).
// An empty request leaves the machine to DHCP (vmnet NAT).
func (a *agent) ConfigureNetwork(ctx context.Context, req *api.ConfigureNetworkRequest) (*api.ConfigureNetworkResponse, error) {
	if len(req.Interfaces) == 0 && len(req.Routes) == 0 {
		return &api.ConfigureNetworkResponse{}, nil
	}
	if !a.cfg.system {
		return nil, errf(codes.FailedPrecondition, "ConfigureNetwork: the agent does not own this machine")
	}
	ifs, err := net.Interfaces()
	if err != nil {
		return nil, errf(codes.Internal, "listing interfaces: %v", err)
	}
	byMAC := map[string]string{}
	for _, in := range ifs {
		if len(in.HardwareAddr) == 6 {
			byMAC[in.HardwareAddr.String()] = in.Name
		}
	}
	svcs, err := networkServices(ctx)
	if err != nil {
		return nil, errf(codes.Internal, "listing network services: %v", err)
	}
	cmds, err := networkPlan(req, byMAC, svcs)
	if err != nil {
		return nil, errf(codes.InvalidArgument, "ConfigureNetwork: %v", err)
	}
	for _, c := range cmds {
		out, err := runTool(ctx, toolPaths[c.tool], c.args...)
		if err != nil && !(c.exists != "" && strings.Contains(out, c.exists)) {
			return nil, errf(codes.Internal, "configuring the network: %v", err)
		}
		a.cfg.log.Debug("network", "cmd", c.String())
	}
	a.cfg.log.Info("network configured", "interfaces", len(req.Interfaces), "routes", len(req.Routes), "commands", len(cmds))
	return &api.ConfigureNetworkResponse{}, nil
}

// SetSysctls writes kernel parameters with sysctl(8); one the kernel
// does not know is NotFound, and nothing after it is written.
func (a *agent) SetSysctls(ctx context.Context, req *api.SetSysctlsRequest) (*api.SetSysctlsResponse, error) {
	if !a.cfg.system {
		return nil, errf(codes.FailedPrecondition, "SetSysctls: the agent does not own this machine")
	}
	names := make([]string, 0, len(req.Sysctls))
	for k := range req.Sysctls {
		names = append(names, k)
	}
	sort.Strings(names)
	for _, k := range names {
		n, err := sysctlName(k)
		if err != nil {
			return nil, errf(codes.InvalidArgument, "%v", err)
		}
		if _, err := unix.Sysctl(n); errors.Is(err, unix.ENOENT) {
			return nil, errf(codes.NotFound, "sysctl %s: the macOS kernel has no such parameter", n)
		}
		v := req.Sysctls[k]
		if strings.ContainsAny(v, "\n\x00") {
			return nil, errf(codes.InvalidArgument, "sysctl %s: invalid value %q", n, v)
		}
		if _, err := runTool(ctx, toolPaths["sysctl"], "-w", n+"="+v); err != nil {
			return nil, errf(codes.InvalidArgument, "%v", err)
		}
	}
	return &api.SetSysctlsResponse{}, nil
}

// guestCPU keeps the guest's cumulative CPU time across Stats calls.
var guestCPU struct {
	sync.Mutex
	all, user cpuTotal
}

// Stats on macOS: memory from vm_stat, CPU time (and its user part)
// summed over the processes ps lists (the kernel's own time outside
// processes is not counted), the NICs' counters from netstat, per
// container the process trees of its processes.
func (a *agent) Stats(ctx context.Context, req *api.StatsRequest) (*api.StatsResponse, error) {
	r := &api.StatsResponse{TimestampUnixNano: time.Now().UnixNano()}
	out, err := runTool(ctx, toolPaths["ps"], "-A", "-o", "pid=,ppid=,rss=,time=,utime=")
	if err != nil {
		return nil, errf(codes.Internal, "listing processes: %v", err)
	}
	procs := parsePS(out)
	guestCPU.Lock()
	total, user := guestCPU.all.sample(procs), guestCPU.user.sample(userOnly(procs))
	guestCPU.Unlock()
	user = min(user, total)
	ncpu, _ := unix.SysctlUint32("hw.ncpu")
	r.Cpu = &api.CPUStats{UsageCoreNanoseconds: uint64(total), NumCpu: ncpu, UserNanoseconds: uint64(user), SystemNanoseconds: uint64(total - user)}
	if ns, err := runTool(ctx, toolPaths["netstat"], "-ibn"); err == nil {
		r.Networks = parseNetstat(ns)
	}
	memsize, err := unix.SysctlUint64("hw.memsize")
	if err != nil {
		return nil, errf(codes.Internal, "hw.memsize: %v", err)
	}
	vs, err := runTool(ctx, toolPaths["vm_stat"])
	if err != nil {
		return nil, errf(codes.Internal, "vm_stat: %v", err)
	}
	v, err := parseVMStat(vs)
	if err != nil {
		return nil, errf(codes.Internal, "%v", err)
	}
	r.Memory = memoryStats(memsize, v)
	for _, p := range req.FilesystemPaths {
		r.Filesystems = append(r.Filesystems, fsStats(p))
	}
	if req.PerContainer {
		roots := map[int]string{}
		for _, p := range a.snapshot("") {
			p.mu.Lock()
			if p.state == api.ProcessState_RUNNING {
				roots[p.pid] = p.key.container
			}
			p.mu.Unlock()
		}
		for _, cs := range treeStats(procs, roots) {
			r.Containers = append(r.Containers, cs)
		}
	}
	return r, nil
}

// uptime is the time since the kernel started (CLOCK_MONOTONIC counts
// from boot on macOS): the guest's own clock for where its boot went.
func uptime() time.Duration {
	var ts unix.Timespec
	if unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts) != nil {
		return 0
	}
	return time.Duration(ts.Nano())
}

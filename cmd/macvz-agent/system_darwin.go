package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"

	api "github.com/macvz/macvz/runtime/agentapi"
)

// The macOS guest side: processes, files, port forwarding and vsock work;
// what belongs to the guest's init (launchd there) is not implemented yet.

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

var errDarwin = errf(codes.Unimplemented, "not implemented on macOS guests yet")

func (a *agent) Stats(ctx context.Context, req *api.StatsRequest) (*api.StatsResponse, error) {
	return nil, errDarwin
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
		return a.linkShare(req)
	}
	if req.Fstype != "virtiofs" {
		return nil, errf(codes.InvalidArgument, "MountShare: macOS guests mount virtiofs shares, not %q", req.Fstype)
	}
	if req.CreateTarget {
		if err := os.MkdirAll(req.Target, 0o755); err != nil {
			return nil, osErr(codes.Internal, err, "creating mount point %s", req.Target)
		}
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
	args = append(args, req.Tag, req.Target)
	if out, err := exec.CommandContext(ctx, "/sbin/mount_virtiofs", args...).CombinedOutput(); err != nil {
		return nil, errf(codes.Internal, "mounting virtiofs share %q on %s: %v: %s", req.Tag, req.Target, err, strings.TrimSpace(string(out)))
	}
	a.mu.Lock()
	a.shares[req.Tag] = req.Target
	a.mu.Unlock()
	a.cfg.log.Info("share mounted", "tag", req.Tag, "target", req.Target, "ro", req.ReadOnly)
	return &api.MountShareResponse{}, nil
}

// linkShare makes req.Target a symlink to a path inside a mounted share.
func (a *agent) linkShare(req *api.MountShareRequest) (*api.MountShareResponse, error) {
	a.mu.Lock()
	root, ok := a.shares[req.Tag]
	a.mu.Unlock()
	if !ok {
		return nil, errf(codes.FailedPrecondition, "MountShare: share %q is not mounted; mount its root before a subpath", req.Tag)
	}
	src, err := subpathIn(root, req.Subpath)
	if err != nil {
		return nil, errf(codes.InvalidArgument, "MountShare: %v", err)
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

func (a *agent) ConfigureNetwork(ctx context.Context, req *api.ConfigureNetworkRequest) (*api.ConfigureNetworkResponse, error) {
	return nil, errDarwin
}

func initMounts(log *slog.Logger) {}

func loadModules(log *slog.Logger, path string, loaded chan<- struct{}, ready chan<- struct{}) {
	close(ready)
}

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

// setClock: macOS guests keep their own time (timed/NTP).
func setClock(t time.Time) error { return nil }

func (a *agent) SetSysctls(ctx context.Context, req *api.SetSysctlsRequest) (*api.SetSysctlsResponse, error) {
	return nil, errDarwin
}

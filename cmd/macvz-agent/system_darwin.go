package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os/exec"
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

func (a *agent) MountShare(ctx context.Context, req *api.MountShareRequest) (*api.MountShareResponse, error) {
	return nil, errDarwin
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

func powerOff(reboot bool) {}

// setClock: macOS guests keep their own time (timed/NTP).
func setClock(t time.Time) error { return nil }

func (a *agent) SetSysctls(ctx context.Context, req *api.SetSysctlsRequest) (*api.SetSysctlsResponse, error) {
	return nil, errDarwin
}

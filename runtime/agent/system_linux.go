package agent

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"

	api "github.com/macvz/macvz/runtime/agentapi"
)

func setKernelHostname(h string) error { return unix.Sethostname([]byte(h)) }

func cstr(b []byte) string {
	if i := bytes.IndexByte(b, 0); i >= 0 {
		b = b[:i]
	}
	return string(b)
}

func sysInfo(r *api.InfoResponse) {
	var u unix.Utsname
	if unix.Uname(&u) == nil {
		r.KernelRelease = cstr(u.Release[:])
		r.KernelVersion = cstr(u.Version[:])
	}
	if v, ok := procStatField("btime"); ok && len(v) > 0 {
		if s, err := strconv.ParseInt(v[0], 10, 64); err == nil {
			r.BootTimeUnixNano = s * int64(time.Second)
		}
	}
	if m, err := readMeminfo(); err == nil {
		r.MemoryTotalBytes = m["MemTotal"]
	}
}

// procStatField returns the fields of the line of /proc/stat named key.
func procStatField(key string) ([]string, bool) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return nil, false
	}
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) > 0 && f[0] == key {
			return f[1:], true
		}
	}
	return nil, false
}

// readMeminfo returns /proc/meminfo in bytes.
func readMeminfo() (map[string]uint64, error) {
	f, err := os.Open("/proc/meminfo")
	if err != nil {
		return nil, err
	}
	defer f.Close()
	m := map[string]uint64{}
	s := bufio.NewScanner(f)
	for s.Scan() {
		k, v, ok := strings.Cut(s.Text(), ":")
		if !ok {
			continue
		}
		f := strings.Fields(v)
		if len(f) == 0 {
			continue
		}
		n, err := strconv.ParseUint(f[0], 10, 64)
		if err != nil {
			continue
		}
		if len(f) > 1 && f[1] == "kB" {
			n *= 1024
		}
		m[k] = n
	}
	return m, s.Err()
}

// userHZ is the unit of /proc/stat times (USER_HZ, 100 on every Linux ABI).
const userHZ = 100

func (a *agent) Stats(ctx context.Context, req *api.StatsRequest) (*api.StatsResponse, error) {
	r := &api.StatsResponse{TimestampUnixNano: time.Now().UnixNano()}
	if f, ok := procStatField("cpu"); ok {
		// user nice system idle iowait irq softirq steal ...
		var busy uint64
		for i, v := range f {
			if i == 3 || i == 4 || i >= 8 {
				continue
			}
			n, _ := strconv.ParseUint(v, 10, 64)
			busy += n
		}
		user, system := cpuTimes(f)
		tick := uint64(time.Second) / userHZ
		r.Cpu = &api.CPUStats{UsageCoreNanoseconds: busy * tick, NumCpu: uint32(numCPU()), UserNanoseconds: user * tick, SystemNanoseconds: system * tick}
	}
	m, err := readMeminfo()
	if err != nil {
		return nil, osErr(codes.Internal, err, "reading /proc/meminfo")
	}
	usage := m["MemTotal"] - m["MemFree"]
	ws := usage
	if in := m["Inactive(file)"]; in < ws {
		ws -= in
	}
	r.Memory = &api.MemoryStats{
		TotalBytes:      m["MemTotal"],
		AvailableBytes:  m["MemAvailable"],
		UsageBytes:      usage,
		WorkingSetBytes: ws,
		RssBytes:        m["AnonPages"],
	}
	memoryExtras(r.Memory, m, keyValues(readText("/proc/vmstat")))
	r.Networks = netDev(readText("/proc/net/dev"))
	r.Disks = diskStats(readText("/proc/diskstats"), func(name string) bool {
		// /sys/block lists whole disks only; ram and loop devices are
		// not the guest's storage.
		if strings.HasPrefix(name, "ram") || strings.HasPrefix(name, "loop") || strings.ContainsAny(name, "/.") {
			return false
		}
		_, err := os.Stat(filepath.Join("/sys/block", name))
		return err == nil
	})
	r.Tasks = &api.TaskStats{
		Threads:         loadavgThreads(readText("/proc/loadavg")),
		ThreadsMax:      firstNumber(readText("/proc/sys/kernel/threads-max")),
		FileDescriptors: firstNumber(readText("/proc/sys/fs/file-nr")),
		Sockets:         sockstatUsed(readText("/proc/net/sockstat")),
	}
	for _, p := range req.FilesystemPaths {
		r.Filesystems = append(r.Filesystems, fsStats(p))
	}
	if req.PerContainer {
		r.Containers = a.containerStats()
	}
	return r, nil
}

func numCPU() int {
	n := 0
	if f, err := os.ReadFile("/proc/stat"); err == nil {
		for _, l := range strings.Split(string(f), "\n") {
			if strings.HasPrefix(l, "cpu") && len(l) > 3 && l[3] >= '0' && l[3] <= '9' {
				n++
			}
		}
	}
	return n
}

// containerStats sums CPU time and RSS of the live processes in the
// sessions of each container's processes (each process leads its own).
func (a *agent) containerStats() []*api.ContainerStats {
	sessions := map[int]string{}
	out := map[string]*api.ContainerStats{}
	cgroups := map[string]string{}
	for _, p := range a.snapshot("") {
		p.mu.Lock()
		if p.state == api.ProcessState_RUNNING {
			sessions[p.pid] = p.key.container
		}
		if p.key.exec == "" && p.cgroup != "" {
			cgroups[p.key.container] = p.cgroup
		}
		p.mu.Unlock()
		if out[p.key.container] == nil {
			out[p.key.container] = &api.ContainerStats{ContainerId: p.key.container}
		}
	}
	ents, _ := os.ReadDir("/proc")
	page := uint64(os.Getpagesize())
	for _, e := range ents {
		if _, err := strconv.Atoi(e.Name()); err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue
		}
		// pid (comm) state ppid pgrp session ... utime(14) stime(15) ... rss(24)
		i := bytes.LastIndexByte(b, ')')
		if i < 0 {
			continue
		}
		f := strings.Fields(string(b[i+1:]))
		if len(f) < 22 {
			continue
		}
		sid, _ := strconv.Atoi(f[3])
		c, ok := sessions[sid]
		if !ok {
			continue
		}
		ut, _ := strconv.ParseUint(f[11], 10, 64)
		st, _ := strconv.ParseUint(f[12], 10, 64)
		rss, _ := strconv.ParseUint(f[21], 10, 64)
		rssBytes := rss * page
		// stat's rss lags for small processes (the kernel batches its
		// per-thread counters); smaps_rollup walks the page tables.
		if r, ok := smapsRSS(e.Name()); ok {
			rssBytes = r
		}
		threads, _ := strconv.ParseUint(f[17], 10, 64)
		fds, sockets := openFiles(e.Name())
		cs := out[c]
		tick := uint64(time.Second) / userHZ
		cs.CpuUsageCoreNanoseconds += (ut + st) * tick
		cs.CpuUserNanoseconds += ut * tick
		cs.CpuSystemNanoseconds += st * tick
		cs.MemoryRssBytes += rssBytes
		cs.Processes++
		cs.Threads += threads
		cs.FileDescriptors += fds
		cs.Sockets += sockets
	}
	for c, dir := range cgroups {
		files := map[string]string{}
		for _, name := range cgroupFiles {
			if b, err := os.ReadFile(filepath.Join(dir, name)); err == nil {
				files[name] = string(b)
			}
		}
		if cs := out[c]; cs != nil {
			cs.Cgroup = cgroupStats(files)
		}
	}
	var r []*api.ContainerStats
	for _, cs := range out {
		r = append(r, cs)
	}
	return r
}

func (a *agent) MountShare(ctx context.Context, req *api.MountShareRequest) (*api.MountShareResponse, error) {
	if req.Tag == "" || !filepath.IsAbs(req.Target) {
		return nil, errf(codes.InvalidArgument, "MountShare needs a tag and an absolute target (got %q, %q)", req.Tag, req.Target)
	}
	if req.Subpath != "" {
		return a.bindShare(ctx, req)
	}
	if _, err := shareOptions(req); err != nil {
		return nil, err
	}
	if !a.cfg.system {
		return nil, errf(codes.FailedPrecondition, "MountShare: the agent does not own this machine")
	}
	return a.rootShare(ctx, req)
}

// shareOptions are the mount options of a share's root: the file
// system's defaults and req's.
func shareOptions(req *api.MountShareRequest) ([]string, error) {
	var opts []string
	switch req.Fstype {
	case "9p":
		opts = []string{"trans=virtio", "version=9p2000.L", "msize=262144"}
	case "virtiofs":
	default:
		return nil, errf(codes.InvalidArgument, "MountShare: fstype %q is not 9p or virtiofs", req.Fstype)
	}
	for _, o := range req.Options {
		if o == "" || strings.Contains(o, ",") {
			return nil, errf(codes.InvalidArgument, "MountShare: invalid option %q", o)
		}
	}
	return append(opts, req.Options...), nil
}

// mountShareRoot mounts a checked request's share at its target, once
// the file system's modules are in.
func (a *agent) mountShareRoot(ctx context.Context, req *api.MountShareRequest) error {
	opts, err := shareOptions(req)
	if err != nil {
		return err
	}
	if err := a.mods.need(ctx, shareModules[req.Fstype]...); err != nil {
		return err
	}
	if req.CreateTarget {
		if err := os.MkdirAll(req.Target, 0o755); err != nil {
			return osErr(codes.Internal, err, "creating mount point %s", req.Target)
		}
	}
	var flags uintptr
	if req.ReadOnly {
		flags |= unix.MS_RDONLY
	}
	if err := unix.Mount(req.Tag, req.Target, req.Fstype, flags, strings.Join(opts, ",")); err != nil {
		c := codes.Internal
		if errors.Is(err, unix.ENOENT) {
			c = codes.NotFound
		}
		return osErr(c, err, "mounting %s share %q on %s", req.Fstype, req.Tag, req.Target)
	}
	return nil
}

// UnmountShare unmounts a share's root (see the proto). Binds of the
// share elsewhere keep its file system, and QEMU's refusal to migrate,
// alive: then nothing is unmounted and the caller hears where they are.
func (a *agent) UnmountShare(ctx context.Context, req *api.UnmountShareRequest) (*api.UnmountShareResponse, error) {
	if !a.cfg.system {
		return nil, errf(codes.FailedPrecondition, "UnmountShare: the agent does not own this machine")
	}
	a.shareMu.Lock()
	defer a.shareMu.Unlock()
	a.mu.Lock()
	sh, ok := a.shares[req.Tag]
	a.mu.Unlock()
	if !ok {
		return &api.UnmountShareResponse{}, nil
	}
	target := sh.target
	if sh.lazy != nil {
		// Never mounted: forgotten.
		a.mu.Lock()
		delete(a.shares, req.Tag)
		a.mu.Unlock()
		a.cfg.log.Info("share forgotten (it was never mounted)", "tag", req.Tag, "target", target)
		return &api.UnmountShareResponse{}, nil
	}
	info, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return nil, osErr(codes.Internal, err, "reading the mount table")
	}
	_, others, found := mountinfoOthers(string(info), target)
	if found && len(others) > 0 {
		return nil, errf(codes.FailedPrecondition, "share %q is also bound at %s (a container's volume): it stays mounted", req.Tag, strings.Join(others, ", "))
	}
	if found {
		if err := unix.Unmount(target, 0); err != nil {
			c := codes.Internal
			if errors.Is(err, unix.EBUSY) {
				c = codes.FailedPrecondition
			}
			return nil, osErr(c, err, "unmounting share %q at %s", req.Tag, target)
		}
	}
	a.mu.Lock()
	delete(a.shares, req.Tag)
	a.mu.Unlock()
	a.cfg.log.Info("share unmounted", "tag", req.Tag, "target", target)
	return &api.UnmountShareResponse{}, nil
}

// bindShare binds a path inside a mounted share at req.Target.
func (a *agent) bindShare(ctx context.Context, req *api.MountShareRequest) (*api.MountShareResponse, error) {
	root, src, err := a.shareSubpath(ctx, req)
	if err != nil {
		return nil, err
	}
	sub := filepath.Clean(req.Subpath)
	// The share's contents come from the host: resolve symlinks and
	// refuse any that lead out of the share.
	real, err := filepath.EvalSymlinks(src)
	if err != nil {
		return nil, osErr(codes.NotFound, err, "MountShare: %s in share %q", sub, req.Tag)
	}
	if real != root && !strings.HasPrefix(real, root+"/") {
		return nil, errf(codes.InvalidArgument, "MountShare: %s in share %q resolves outside the share", sub, req.Tag)
	}
	fi, err := os.Stat(real)
	if err != nil {
		return nil, osErr(codes.NotFound, err, "MountShare: %s", real)
	}
	if req.CreateTarget {
		if err := makeMountPoint(req.Target, fi.IsDir()); err != nil {
			return nil, osErr(codes.Internal, err, "creating mount point %s", req.Target)
		}
	}
	if err := unix.Mount(real, req.Target, "", unix.MS_BIND|unix.MS_REC, ""); err != nil {
		return nil, osErr(codes.Internal, err, "binding %s on %s", real, req.Target)
	}
	if req.ReadOnly {
		// A bind takes the source's flags; read-only needs a remount of
		// the bind itself.
		if err := unix.Mount("", req.Target, "", unix.MS_BIND|unix.MS_REMOUNT|unix.MS_RDONLY, ""); err != nil {
			unix.Unmount(req.Target, unix.MNT_DETACH)
			return nil, osErr(codes.Internal, err, "making %s read-only", req.Target)
		}
	}
	a.cfg.log.Info("share path bound", "tag", req.Tag, "subpath", sub, "target", req.Target, "ro", req.ReadOnly)
	return &api.MountShareResponse{}, nil
}

// makeMountPoint creates target as a directory or an empty file, with its
// parents.
func makeMountPoint(target string, dir bool) error {
	if dir {
		return os.MkdirAll(target, 0o755)
	}
	if err := os.MkdirAll(filepath.Dir(target), 0o755); err != nil {
		return err
	}
	f, err := os.OpenFile(target, os.O_CREATE|os.O_RDONLY, 0o644)
	if err != nil {
		return err
	}
	return f.Close()
}

func (a *agent) ConfigureNetwork(ctx context.Context, req *api.ConfigureNetworkRequest) (*api.ConfigureNetworkResponse, error) {
	type ifc struct {
		link   netlink.Link
		addrs  []*netlink.Addr
		req    *api.Interface
		setMAC net.HardwareAddr // found by previous_mac: give it this one
	}
	// Validate everything first (the NIC's driver first: its link).
	if err := a.mods.need(ctx, "virtio_net"); err != nil {
		return nil, err
	}
	var ifcs []ifc
	links, err := netlink.LinkList()
	if err != nil && a.cfg.system {
		return nil, osErr(codes.Internal, err, "listing interfaces")
	}
	for _, in := range req.Interfaces {
		mac, err := net.ParseMAC(in.Mac)
		if err != nil {
			return nil, errf(codes.InvalidArgument, "interface MAC %q: %v", in.Mac, err)
		}
		if in.Name != "" && (len(in.Name) >= unix.IFNAMSIZ || strings.ContainsAny(in.Name, "/ \t\n")) {
			return nil, errf(codes.InvalidArgument, "invalid interface name %q", in.Name)
		}
		var c ifc
		c.req = in
		for _, s := range in.Addresses {
			ad, err := netlink.ParseAddr(s)
			if err != nil {
				return nil, errf(codes.InvalidArgument, "interface %s: address %q is not CIDR: %v", in.Mac, s, err)
			}
			if ad.IP.To4() == nil {
				ad.Flags |= unix.IFA_F_NODAD
			}
			c.addrs = append(c.addrs, ad)
		}
		for _, l := range links {
			if bytes.Equal(l.Attrs().HardwareAddr, mac) {
				c.link = l
				break
			}
		}
		if c.link == nil && in.PreviousMac != "" {
			prev, err := net.ParseMAC(in.PreviousMac)
			if err != nil {
				return nil, errf(codes.InvalidArgument, "interface previous MAC %q: %v", in.PreviousMac, err)
			}
			for _, l := range links {
				if bytes.Equal(l.Attrs().HardwareAddr, prev) {
					c.link, c.setMAC = l, mac
					break
				}
			}
		}
		if c.link == nil && a.cfg.system {
			return nil, errf(codes.NotFound, "no interface with MAC %s", in.Mac)
		}
		ifcs = append(ifcs, c)
	}
	var routes []*netlink.Route
	for _, rt := range req.Routes {
		r := &netlink.Route{Priority: int(rt.Metric)}
		if rt.Gateway != "" {
			if r.Gw = net.ParseIP(rt.Gateway); r.Gw == nil {
				return nil, errf(codes.InvalidArgument, "route gateway %q is not an IP", rt.Gateway)
			}
		}
		if rt.Source != "" {
			if r.Src = net.ParseIP(rt.Source); r.Src == nil {
				return nil, errf(codes.InvalidArgument, "route source %q is not an IP", rt.Source)
			}
		}
		if rt.Destination != "" {
			_, dst, err := net.ParseCIDR(rt.Destination)
			if err != nil {
				return nil, errf(codes.InvalidArgument, "route destination %q: %v", rt.Destination, err)
			}
			r.Dst = dst
		} else if r.Gw == nil {
			return nil, errf(codes.InvalidArgument, "a route needs a destination or a gateway")
		} else if r.Gw.To4() != nil {
			r.Dst = &net.IPNet{IP: net.IPv4zero, Mask: net.CIDRMask(0, 32)}
		} else {
			r.Dst = &net.IPNet{IP: net.IPv6zero, Mask: net.CIDRMask(0, 128)}
		}
		if rt.Device == "" && r.Gw == nil {
			return nil, errf(codes.InvalidArgument, "route %s needs a device or a gateway", rt.Destination)
		}
		routes = append(routes, r)
	}
	if !a.cfg.system {
		return nil, errf(codes.FailedPrecondition, "ConfigureNetwork: the agent does not own this machine")
	}

	if err := loopbackUp(); err != nil {
		return nil, osErr(codes.Internal, err, "bringing lo up")
	}
	for _, c := range ifcs {
		l := c.link
		if c.setMAC != nil {
			// Down first: not every driver takes a new address while up.
			if err := netlink.LinkSetDown(l); err != nil {
				return nil, osErr(codes.Internal, err, "interface %s down", l.Attrs().Name)
			}
			if err := netlink.LinkSetHardwareAddr(l, c.setMAC); err != nil {
				return nil, osErr(codes.Internal, err, "setting MAC %s on %s", c.setMAC, l.Attrs().Name)
			}
		}
		if c.req.Name != "" && c.req.Name != l.Attrs().Name {
			if err := netlink.LinkSetDown(l); err != nil {
				return nil, osErr(codes.Internal, err, "interface %s down", l.Attrs().Name)
			}
			if err := netlink.LinkSetName(l, c.req.Name); err != nil {
				return nil, osErr(codes.Internal, err, "renaming %s to %s", l.Attrs().Name, c.req.Name)
			}
		}
		if c.req.Mtu > 0 {
			if err := netlink.LinkSetMTU(l, int(c.req.Mtu)); err != nil {
				return nil, osErr(codes.Internal, err, "setting MTU %d on %s", c.req.Mtu, c.req.Mac)
			}
		}
		for _, ad := range c.addrs {
			if err := netlink.AddrReplace(l, ad); err != nil {
				return nil, osErr(codes.Internal, err, "adding %s to %s", ad.IPNet, c.req.Mac)
			}
		}
		if err := netlink.LinkSetUp(l); err != nil {
			return nil, osErr(codes.Internal, err, "interface %s up", c.req.Mac)
		}
	}
	for i, r := range routes {
		if dev := req.Routes[i].Device; dev != "" {
			l, err := netlink.LinkByName(dev)
			if err != nil {
				return nil, osErr(codes.NotFound, err, "route device %s", dev)
			}
			r.LinkIndex = l.Attrs().Index
		}
		if err := netlink.RouteReplace(r); err != nil {
			return nil, osErr(codes.Internal, err, "adding route to %s via %s", r.Dst, r.Gw)
		}
	}
	a.cfg.log.Info("network configured", "interfaces", len(ifcs), "routes", len(routes))
	return &api.ConfigureNetworkResponse{}, nil
}

func loopbackUp() error {
	l, err := netlink.LinkByName("lo")
	if err != nil {
		return err
	}
	return netlink.LinkSetUp(l)
}

// powerOff ends the guest: sync, unmount what it can, then power off or
// restart.
func powerOff(reboot bool) {
	unix.Sync()
	cmd := unix.LINUX_REBOOT_CMD_POWER_OFF
	if reboot {
		cmd = unix.LINUX_REBOOT_CMD_RESTART
	}
	err := unix.Reboot(cmd)
	fmt.Fprintf(os.Stderr, "macvz-agent: reboot(%#x): %v\n", cmd, err)
}

// setClock sets the system clock (CLOCK_REALTIME).
func setClock(t time.Time) error {
	ts := unix.NsecToTimespec(t.UnixNano())
	return unix.ClockSettime(unix.CLOCK_REALTIME, &ts)
}

// smapsRSS is a process's resident memory from /proc/<pid>/smaps_rollup.
func smapsRSS(pid string) (uint64, bool) {
	b, err := os.ReadFile(filepath.Join("/proc", pid, "smaps_rollup"))
	if err != nil {
		return 0, false
	}
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) >= 2 && f[0] == "Rss:" {
			kb, err := strconv.ParseUint(f[1], 10, 64)
			return kb << 10, err == nil
		}
	}
	return 0, false
}

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
		rel := strings.ReplaceAll(k, ".", "/")
		if k == "" || strings.Contains(k, "..") || strings.HasPrefix(rel, "/") {
			return nil, errf(codes.InvalidArgument, "SetSysctls: invalid name %q", k)
		}
		p := filepath.Join("/proc/sys", rel)
		if err := os.WriteFile(p, []byte(req.Sysctls[k]), 0o644); err != nil {
			c := codes.Internal
			if errors.Is(err, os.ErrNotExist) {
				c = codes.NotFound
			}
			return nil, osErr(c, err, "setting sysctl %s", k)
		}
	}
	return &api.SetSysctlsResponse{}, nil
}

// systemDNS: Linux resolvers read /etc/resolv.conf, which the caller
// writes.
func systemDNS(ctx context.Context, a *agent, req *api.WriteResolvConfRequest) (bool, error) {
	return false, nil
}

// readText is a small /proc or /sys file's contents, "" when it cannot
// be read (a kernel without it).
func readText(path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	return string(b)
}

// openFiles counts a process's open file descriptors and, of them, its
// sockets.
func openFiles(pid string) (fds, sockets uint64) {
	dir := filepath.Join("/proc", pid, "fd")
	f, err := os.Open(dir)
	if err != nil {
		return 0, 0
	}
	defer f.Close()
	// Names only, in batches: a process may hold a million files. Only
	// the first maxSocketProbes are told apart by readlink (one syscall
	// each): past them the socket count is a lower bound, so that no
	// container makes every Stats call slow.
	probed := 0
	for {
		names, err := f.Readdirnames(1024)
		for _, n := range names {
			fds++
			if probed < maxSocketProbes {
				probed++
				if l, err := os.Readlink(filepath.Join(dir, n)); err == nil && strings.HasPrefix(l, "socket:") {
					sockets++
				}
			}
		}
		if err != nil || len(names) == 0 {
			return fds, sockets
		}
	}
}

// maxSocketProbes bounds the readlinks of one process's files per Stats
// call.
const maxSocketProbes = 16384

// uptime is the time since the kernel started, suspend included
// (CLOCK_BOOTTIME): the guest's own clock for where its boot went.
func uptime() time.Duration {
	var ts unix.Timespec
	if unix.ClockGettime(unix.CLOCK_BOOTTIME, &ts) != nil {
		return 0
	}
	return time.Duration(ts.Nano())
}

package exechelper

import (
	"errors"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"unsafe"

	"golang.org/x/net/bpf"
	"golang.org/x/sys/unix"
)

// Run is the helper, on the arguments after Marker. All it does is per
// thread or must precede the exec on the same thread: one locked thread.
// It never returns: it execs the process or exits 127 with the reason on
// stderr (the process's own stderr, which the agent reports).
func Run(args []string) {
	fail := func(format string, a ...any) {
		fmt.Fprintf(os.Stderr, "macvz-agent: "+format+"\n", a...)
		os.Exit(127)
	}
	runtime.LockOSThread()
	p, err := parse(args)
	if err != nil {
		fail("exec helper: %v", err)
	}
	h := p.spec
	if p.syncFD >= 0 {
		// Closed by the exec below: the agent waits for that.
		unix.CloseOnExec(p.syncFD)
	}
	switch {
	case h.NewMountNS:
		// CLONE_FS too: this thread's root and cwd stop being shared
		// with the runtime's other threads, which the new namespace needs.
		if err := unix.Unshare(unix.CLONE_FS | unix.CLONE_NEWNS); err != nil {
			fail("mount namespace: %v", err)
		}
		// Nothing done here may reach the guest's own namespace.
		if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_SLAVE, ""); err != nil {
			fail("mount namespace: %v", err)
		}
		for _, s := range mountPlan(h) {
			if err := runMountStep(s); err != nil {
				fail("%v", err)
			}
		}
	case h.JoinMountNS > 0:
		f, err := os.Open("/proc/" + strconv.Itoa(h.JoinMountNS) + "/ns/mnt")
		if err != nil {
			fail("the container's mount namespace: %v", err)
		}
		if err := unix.Unshare(unix.CLONE_FS); err != nil {
			fail("mount namespace: %v", err)
		}
		if err := unix.Setns(int(f.Fd()), unix.CLONE_NEWNS); err != nil {
			fail("entering the container's mount namespace: %v", err)
		}
		f.Close()
	}
	if h.RestrictCaps {
		keep := map[int]bool{}
		for _, n := range h.Caps {
			keep[CapNames[n]] = true
		}
		last := unix.CAP_LAST_CAP
		if b, err := os.ReadFile("/proc/sys/kernel/cap_last_cap"); err == nil {
			if n, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil {
				last = n
			}
		}
		for c := 0; c <= last; c++ {
			if !keep[c] {
				if err := unix.Prctl(unix.PR_CAPBSET_DROP, uintptr(c), 0, 0, 0); err != nil {
					fail("dropping capability %d: %v", c, err)
				}
			}
		}
	}
	// Without no_new_privs a filter needs CAP_SYS_ADMIN, gone after the
	// uid switch: load it now, as runc does (the profile must then allow
	// the few calls left before the exec). With it, load it last.
	if h.Seccomp != nil && !h.NoNewPrivs {
		if err := InstallSeccomp(h.Seccomp.Insns, h.Seccomp.Flags); err != nil {
			fail("seccomp filter: %v", err)
		}
	}
	groups := make([]int, len(h.Groups))
	for i, g := range h.Groups {
		groups[i] = int(g)
	}
	if err := syscall.Setgroups(groups); err != nil {
		fail("setgroups: %v", err)
	}
	if err := syscall.Setgid(int(h.GID)); err != nil {
		fail("setgid: %v", err)
	}
	if err := syscall.Setuid(int(h.UID)); err != nil {
		fail("setuid: %v", err)
	}
	if h.NoNewPrivs {
		if err := unix.Prctl(unix.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0); err != nil {
			fail("no_new_privs: %v", err)
		}
		if h.Seccomp != nil {
			if err := InstallSeccomp(h.Seccomp.Insns, h.Seccomp.Flags); err != nil {
				fail("seccomp filter: %v", err)
			}
		}
	}
	err = syscall.Exec(p.path, p.argv, os.Environ())
	fail("exec %s: %v", p.path, err)
}

// InstallSeccomp loads a filter on the calling thread, which then execs:
// the filter passes to the new program (no TSYNC: the helper's other
// threads die with the exec).
func InstallSeccomp(insns []bpf.RawInstruction, flags uint) error {
	filter := make([]unix.SockFilter, len(insns))
	for i, in := range insns {
		filter[i] = unix.SockFilter{Code: in.Op, Jt: in.Jt, Jf: in.Jf, K: in.K}
	}
	prog := unix.SockFprog{Len: uint16(len(filter)), Filter: &filter[0]}
	_, _, e := unix.RawSyscall(unix.SYS_SECCOMP, unix.SECCOMP_SET_MODE_FILTER, uintptr(flags), uintptr(unsafe.Pointer(&prog)))
	runtime.KeepAlive(filter)
	if e != 0 {
		return e
	}
	return nil
}

// openNoSymlinks opens path (absolute) as an O_PATH handle without
// following any symbolic link on the way or at its end: a masked or
// read-only path means that path, never where a link in the container's
// tree points. (nil, nil) when it does not exist.
func openNoSymlinks(path string) (*os.File, error) {
	fd, err := unix.Openat2(unix.AT_FDCWD, path, &unix.OpenHow{
		Flags:   unix.O_PATH | unix.O_CLOEXEC | unix.O_NOFOLLOW,
		Resolve: unix.RESOLVE_NO_SYMLINKS | unix.RESOLVE_NO_MAGICLINKS,
	})
	switch {
	case errors.Is(err, unix.ENOENT), errors.Is(err, unix.ENOTDIR):
		return nil, nil
	case errors.Is(err, unix.ELOOP):
		return nil, fmt.Errorf("%s is or passes through a symbolic link; name the path the link leads to", path)
	case err != nil:
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	// O_PATH|O_NOFOLLOW opens a link at the end itself instead of
	// failing: refuse it the same.
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if st.Mode&unix.S_IFMT == unix.S_IFLNK {
		unix.Close(fd)
		return nil, fmt.Errorf("%s is or passes through a symbolic link; name the path the link leads to", path)
	}
	return os.NewFile(uintptr(fd), path), nil
}

// fdPath names an open file for mount(2), which follows the magic link to
// exactly that file.
func fdPath(f *os.File) string { return "/proc/self/fd/" + strconv.Itoa(int(f.Fd())) }

// runMountStep carries out one step of mountPlan in the helper's own
// mount namespace. Missing paths are skipped, as runc does.
func runMountStep(s mountStep) error {
	switch s.kind {
	case stepProc:
		if err := unix.Mount("proc", "/proc", "proc", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, ""); err != nil {
			return fmt.Errorf("mounting /proc for the container's PID namespace: %w", err)
		}
		return nil
	case stepRORoot:
		if err := unix.Mount("", "/", "", unix.MS_BIND|unix.MS_REMOUNT|unix.MS_RDONLY, ""); err != nil {
			return fmt.Errorf("read-only root: %w", err)
		}
		return nil
	}
	f, err := openNoSymlinks(s.path)
	if err != nil || f == nil {
		return err
	}
	defer f.Close()
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		return fmt.Errorf("%s: %w", s.path, err)
	}
	switch s.kind {
	case stepMask:
		if st.Mode&unix.S_IFMT == unix.S_IFDIR {
			err = unix.Mount("tmpfs", fdPath(f), "tmpfs", unix.MS_RDONLY|unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, "size=0")
		} else {
			err = unix.Mount("/dev/null", fdPath(f), "", unix.MS_BIND, "")
		}
		if err != nil {
			return fmt.Errorf("masking %s: %w", s.path, err)
		}
	case stepReadonly:
		if err := unix.Mount(fdPath(f), fdPath(f), "", unix.MS_BIND|unix.MS_REC, ""); err != nil {
			return fmt.Errorf("read-only path %s: %w", s.path, err)
		}
		// The handle still names the file under the new bind: open the
		// path again to reach the bind itself.
		top, err := openNoSymlinks(s.path)
		if err != nil || top == nil {
			return fmt.Errorf("read-only path %s: reopening after the bind: %v", s.path, err)
		}
		defer top.Close()
		if err := unix.Mount("", fdPath(top), "", unix.MS_BIND|unix.MS_REMOUNT|unix.MS_RDONLY, ""); err != nil {
			return fmt.Errorf("read-only path %s: %w", s.path, err)
		}
	}
	return nil
}

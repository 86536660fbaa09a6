package agent

import (
	"encoding/base64"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// execHelperArg is argv[1] of the agent re-executed as a process's
// last step before exec: Go cannot run code in a forked child, and
// bounding-set drops must happen as root, before the uid switch.
const execHelperArg = "__macvz_exec"

// capNames maps capability names to numbers (linux/capability.h).
var capNames = map[string]int{
	"CAP_CHOWN": 0, "CAP_DAC_OVERRIDE": 1, "CAP_DAC_READ_SEARCH": 2, "CAP_FOWNER": 3, "CAP_FSETID": 4,
	"CAP_KILL": 5, "CAP_SETGID": 6, "CAP_SETUID": 7, "CAP_SETPCAP": 8, "CAP_LINUX_IMMUTABLE": 9,
	"CAP_NET_BIND_SERVICE": 10, "CAP_NET_BROADCAST": 11, "CAP_NET_ADMIN": 12, "CAP_NET_RAW": 13,
	"CAP_IPC_LOCK": 14, "CAP_IPC_OWNER": 15, "CAP_SYS_MODULE": 16, "CAP_SYS_RAWIO": 17, "CAP_SYS_CHROOT": 18,
	"CAP_SYS_PTRACE": 19, "CAP_SYS_PACCT": 20, "CAP_SYS_ADMIN": 21, "CAP_SYS_BOOT": 22, "CAP_SYS_NICE": 23,
	"CAP_SYS_RESOURCE": 24, "CAP_SYS_TIME": 25, "CAP_SYS_TTY_CONFIG": 26, "CAP_MKNOD": 27, "CAP_LEASE": 28,
	"CAP_AUDIT_WRITE": 29, "CAP_AUDIT_CONTROL": 30, "CAP_SETFCAP": 31, "CAP_MAC_OVERRIDE": 32,
	"CAP_MAC_ADMIN": 33, "CAP_SYSLOG": 34, "CAP_WAKE_ALARM": 35, "CAP_BLOCK_SUSPEND": 36, "CAP_AUDIT_READ": 37,
	"CAP_PERFMON": 38, "CAP_BPF": 39, "CAP_CHECKPOINT_RESTORE": 40,
}

// helperSpec is what the exec helper does before it execs the process.
type helperSpec struct {
	restrictCaps bool
	caps         []string
	noNewPrivs   bool
	uid, gid     uint32
	groups       []uint32
	// newMountNS makes a mount namespace (with readOnlyRoot and
	// readonlyPaths applied); joinMountNS (a pid) enters another's.
	newMountNS    bool
	readOnlyRoot  bool
	readonlyPaths []string
	maskedPaths   []string
	joinMountNS   int
	// newPidNS: the helper is pid 1 of a new PID namespace (the agent
	// cloned it so) and mounts its /proc.
	newPidNS bool
	// seccomp is the compiled filter, installed last.
	seccomp *compiledSeccomp
}

// helperArgs is the argv that runs path/argv through the exec helper:
// key=value settings, "--", the path, the process's argv.
func helperArgs(path string, argv []string, h helperSpec) ([]string, error) {
	for _, c := range h.caps {
		if _, ok := capNames[c]; !ok {
			return nil, fmt.Errorf("unknown capability %q", c)
		}
	}
	args := []string{"macvz-agent", execHelperArg,
		"nnp=" + strconv.FormatBool(h.noNewPrivs),
		"uid=" + strconv.FormatUint(uint64(h.uid), 10),
		"gid=" + strconv.FormatUint(uint64(h.gid), 10)}
	if h.restrictCaps {
		args = append(args, "caps="+strings.Join(h.caps, ","))
	}
	for _, g := range h.groups {
		args = append(args, "group="+strconv.FormatUint(uint64(g), 10))
	}
	switch {
	case h.newMountNS:
		args = append(args, "mntns=new", "roroot="+strconv.FormatBool(h.readOnlyRoot))
		if h.newPidNS {
			args = append(args, "pidns=new")
		}
		for _, p := range h.readonlyPaths {
			if !filepath.IsAbs(p) {
				return nil, fmt.Errorf("read-only path %q is not absolute", p)
			}
			args = append(args, "ropath="+p)
		}
		for _, p := range h.maskedPaths {
			if !filepath.IsAbs(p) {
				return nil, fmt.Errorf("masked path %q is not absolute", p)
			}
			args = append(args, "maskpath="+p)
		}
	case h.joinMountNS > 0:
		args = append(args, "mntns=join:"+strconv.Itoa(h.joinMountNS))
	}
	if h.seccomp != nil {
		args = append(args, "seccomp="+base64.StdEncoding.EncodeToString(h.seccomp.bytes()),
			"seccompflags="+strconv.FormatUint(uint64(h.seccomp.flags), 10))
	}
	return append(append(args, "--", path), argv...), nil
}

// execHelper is the re-executed agent: it sets up the mount namespace,
// drops capabilities from the bounding set, switches to the process's
// user, sets no_new_privs and execs the process. All of it is per thread
// or must precede the exec on the same thread: one locked thread. It
// never returns.
func execHelper(args []string) {
	fail := func(format string, a ...any) {
		fmt.Fprintf(os.Stderr, "macvz-agent: "+format+"\n", a...)
		os.Exit(127)
	}
	runtime.LockOSThread()
	var (
		h       helperSpec
		capsSet bool
		mntns   string
	)
	i := 0
	for ; i < len(args) && args[i] != "--"; i++ {
		k, v, _ := strings.Cut(args[i], "=")
		switch k {
		case "nnp":
			h.noNewPrivs = v == "true"
		case "uid", "gid", "group":
			n, err := strconv.ParseUint(v, 10, 32)
			if err != nil {
				fail("exec helper: bad %s %q", k, v)
			}
			switch k {
			case "uid":
				h.uid = uint32(n)
			case "gid":
				h.gid = uint32(n)
			default:
				h.groups = append(h.groups, uint32(n))
			}
		case "caps":
			capsSet = true
			if v != "" {
				h.caps = strings.Split(v, ",")
			}
		case "sync":
			// Closed by the exec below: the agent waits for that.
			n, err := strconv.Atoi(v)
			if err != nil {
				fail("exec helper: bad sync fd %q", v)
			}
			unix.CloseOnExec(n)
		case "mntns":
			mntns = v
		case "roroot":
			h.readOnlyRoot = v == "true"
		case "ropath":
			h.readonlyPaths = append(h.readonlyPaths, v)
		case "maskpath":
			h.maskedPaths = append(h.maskedPaths, v)
		case "pidns":
			h.newPidNS = v == "new"
		case "seccomp":
			b, err := base64.StdEncoding.DecodeString(v)
			if err != nil {
				fail("exec helper: bad seccomp program: %v", err)
			}
			insns, err := parseSeccompBytes(b)
			if err != nil {
				fail("exec helper: %v", err)
			}
			if h.seccomp == nil {
				h.seccomp = &compiledSeccomp{}
			}
			h.seccomp.insns = insns
		case "seccompflags":
			n, err := strconv.ParseUint(v, 10, 32)
			if err != nil {
				fail("exec helper: bad seccomp flags %q", v)
			}
			if h.seccomp == nil {
				h.seccomp = &compiledSeccomp{}
			}
			h.seccomp.flags = uint(n)
		default:
			fail("exec helper: unknown setting %q", args[i])
		}
	}
	if i+1 >= len(args) {
		fail("exec helper: no command")
	}
	path, argv := args[i+1], args[i+2:]

	switch {
	case mntns == "new":
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
	case strings.HasPrefix(mntns, "join:"):
		f, err := os.Open("/proc/" + strings.TrimPrefix(mntns, "join:") + "/ns/mnt")
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
	if capsSet {
		keep := map[int]bool{}
		for _, n := range h.caps {
			keep[capNames[n]] = true
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
	if h.seccomp != nil && !h.noNewPrivs {
		if err := installSeccomp(h.seccomp.insns, h.seccomp.flags); err != nil {
			fail("seccomp filter: %v", err)
		}
	}
	groups := make([]int, len(h.groups))
	for i, g := range h.groups {
		groups[i] = int(g)
	}
	if err := syscall.Setgroups(groups); err != nil {
		fail("setgroups: %v", err)
	}
	if err := syscall.Setgid(int(h.gid)); err != nil {
		fail("setgid: %v", err)
	}
	if err := syscall.Setuid(int(h.uid)); err != nil {
		fail("setuid: %v", err)
	}
	if h.noNewPrivs {
		if err := unix.Prctl(unix.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0); err != nil {
			fail("no_new_privs: %v", err)
		}
		if h.seccomp != nil {
			if err := installSeccomp(h.seccomp.insns, h.seccomp.flags); err != nil {
				fail("seccomp filter: %v", err)
			}
		}
	}
	err := syscall.Exec(path, argv, os.Environ())
	fail("exec %s: %v", path, err)
}

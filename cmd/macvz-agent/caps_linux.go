package main

import (
	"fmt"
	"os"
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

// helperArgs is the argv that runs path/argv through the exec helper.
func helperArgs(path string, argv []string, restrict bool, caps []string, nnp bool, uid, gid uint32, groups []uint32) ([]string, error) {
	for _, c := range caps {
		if _, ok := capNames[c]; !ok {
			return nil, fmt.Errorf("unknown capability %q", c)
		}
	}
	capArg := "-"
	if restrict {
		capArg = "," + strings.Join(caps, ",")
	}
	gs := make([]string, len(groups))
	for i, g := range groups {
		gs[i] = strconv.FormatUint(uint64(g), 10)
	}
	return append([]string{"macvz-agent", execHelperArg, capArg, strconv.FormatBool(nnp),
		strconv.FormatUint(uint64(uid), 10), strconv.FormatUint(uint64(gid), 10), "," + strings.Join(gs, ","), path}, argv...), nil
}

// execHelper is the re-executed agent: it drops capabilities from the
// bounding set, switches to the process's user, sets no_new_privs and
// execs the process. It never returns.
func execHelper(args []string) {
	fail := func(format string, a ...any) {
		fmt.Fprintf(os.Stderr, "macvz-agent: "+format+"\n", a...)
		os.Exit(127)
	}
	if len(args) < 7 {
		fail("exec helper: bad arguments")
	}
	// Bounding set, no_new_privs and the exec are per thread: one thread.
	runtime.LockOSThread()
	if capArg := args[0]; capArg != "-" {
		keep := map[int]bool{}
		for _, n := range strings.Split(strings.TrimPrefix(capArg, ","), ",") {
			if n != "" {
				keep[capNames[n]] = true
			}
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
	uid, err1 := strconv.ParseUint(args[2], 10, 32)
	gid, err2 := strconv.ParseUint(args[3], 10, 32)
	if err1 != nil || err2 != nil {
		fail("exec helper: bad uid/gid")
	}
	var groups []int
	for _, g := range strings.Split(strings.TrimPrefix(args[4], ","), ",") {
		if g == "" {
			continue
		}
		n, err := strconv.Atoi(g)
		if err != nil {
			fail("exec helper: bad group %q", g)
		}
		groups = append(groups, n)
	}
	if err := syscall.Setgroups(groups); err != nil {
		fail("setgroups: %v", err)
	}
	if err := syscall.Setgid(int(gid)); err != nil {
		fail("setgid: %v", err)
	}
	if err := syscall.Setuid(int(uid)); err != nil {
		fail("setuid: %v", err)
	}
	if args[1] == "true" {
		if err := unix.Prctl(unix.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0); err != nil {
			fail("no_new_privs: %v", err)
		}
	}
	path, argv := args[5], args[6:]
	err := syscall.Exec(path, argv, os.Environ())
	fail("exec %s: %v", path, err)
}

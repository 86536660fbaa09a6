package qemu

import (
	"log/slog"
	"os"
	"os/exec"
	"runtime"
	"sync"
	"syscall"
)

// sysProcAttr: QEMU gets SIGKILL when the thread that started it dies
// (see machine.run for why that thread lives as long as QEMU), and its
// own process group, so a Ctrl-C meant for the shim's terminal does not
// reach QEMU behind the Machine's back.
func sysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, Setpgid: true}
}

func lockOSThread()   { runtime.LockOSThread() }
func unlockOSThread() { runtime.UnlockOSThread() }

// qemuCaps are the only capabilities a root QEMU keeps: reading and
// writing the volumes in its 9p share whoever owns their files
// (dac_override, dac_read_search, fowner, fsetid), attaching to its tap
// (net_admin), and host ports below 1024 forwarded to a host-network
// pod (net_bind_service). Gone with the rest: sys_admin (mounts),
// mknod, sys_module, sys_rawio, sys_ptrace, setuid/setgid, chown, kill.
const qemuCaps = "-all,+dac_override,+dac_read_search,+fowner,+fsetid,+net_admin,+net_bind_service"

var warnNoSetpriv = sync.OnceFunc(func() {
	slog.Warn("setpriv not found (apt-get install util-linux): QEMU runs with all of root's capabilities")
})

var setprivPath = sync.OnceValue(func() string {
	p, err := exec.LookPath("setpriv")
	if err != nil {
		return ""
	}
	return p
})

// command runs QEMU. As root it goes through util-linux's setpriv, which
// drops every capability QEMU does not need from its bounding and
// inheritable sets (so QEMU, root, has only those) and sets
// no_new_privs, then execs QEMU in place: the process is QEMU's.
func command(binary string, args []string) *exec.Cmd {
	if os.Geteuid() != 0 {
		return exec.Command(binary, args...)
	}
	sp := setprivPath()
	if sp == "" {
		warnNoSetpriv()
		return exec.Command(binary, args...)
	}
	return exec.Command(sp, append([]string{"--bounding-set=" + qemuCaps, "--inh-caps=-all", "--no-new-privs", "--", binary}, args...)...)
}

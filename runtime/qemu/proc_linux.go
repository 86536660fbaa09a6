package qemu

import (
	"runtime"
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

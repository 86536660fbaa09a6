//go:build !linux

package qemu

import (
	"os/exec"
	"syscall"
)

// sysProcAttr: only Linux has a parent-death signal; elsewhere QEMU just
// gets its own process group.
func sysProcAttr() *syscall.SysProcAttr { return &syscall.SysProcAttr{Setpgid: true} }

func lockOSThread()   {}
func unlockOSThread() {}

func command(binary string, args []string) *exec.Cmd { return exec.Command(binary, args...) }

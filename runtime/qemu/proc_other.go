//go:build !linux

package qemu

import "syscall"

// sysProcAttr: only Linux has a parent-death signal; elsewhere QEMU just
// gets its own process group.
func sysProcAttr() *syscall.SysProcAttr { return &syscall.SysProcAttr{Setpgid: true} }

func lockOSThread()   {}
func unlockOSThread() {}

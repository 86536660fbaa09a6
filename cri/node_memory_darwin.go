package cri

import "golang.org/x/sys/unix"

// hostMemoryBytes is the host's RAM (0 when unknown).
func hostMemoryBytes() int64 {
	n, err := unix.SysctlUint64("hw.memsize")
	if err != nil {
		return 0
	}
	return int64(n)
}

package cri

import "golang.org/x/sys/unix"

// hostMemoryBytes is the host's RAM (0 when unknown).
func hostMemoryBytes() int64 {
	var si unix.Sysinfo_t
	if err := unix.Sysinfo(&si); err != nil {
		return 0
	}
	return int64(si.Totalram) * int64(si.Unit)
}

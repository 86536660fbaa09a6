package vmimage

import (
	"os"
	"strconv"
	"syscall"
)

// openDirect opens f's file again for writing with O_DIRECT (direct.go):
// a second open file description, so that f's own writes (the partial
// blocks at a run's edges) stay cached. The /proc link is f's file
// itself, whatever its path has become since. Nil when the file system
// has no direct I/O (tmpfs).
func openDirect(f *os.File) *os.File {
	d, err := os.OpenFile("/proc/self/fd/"+strconv.Itoa(int(f.Fd())), os.O_WRONLY|syscall.O_DIRECT|syscall.O_CLOEXEC, 0)
	if err != nil {
		return nil
	}
	return d
}

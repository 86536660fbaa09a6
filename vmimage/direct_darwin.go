//go:build darwin

package vmimage

import (
	"os"

	"golang.org/x/sys/unix"
)

// openDirect is f with the cache bypass of macOS (F_NOCACHE) turned on,
// through a duplicate of its descriptor (direct.go). macOS keeps the flag
// on the open file, which the duplicate shares: f's unaligned writes skip
// the cache too, which costs them nothing but the cache. Nil when the
// flag cannot be set.
func openDirect(f *os.File) *os.File {
	fd, err := unix.Dup(int(f.Fd()))
	if err != nil {
		return nil
	}
	unix.CloseOnExec(fd)
	if _, err := unix.FcntlInt(uintptr(fd), unix.F_NOCACHE, 1); err != nil {
		unix.Close(fd)
		return nil
	}
	return os.NewFile(uintptr(fd), f.Name())
}

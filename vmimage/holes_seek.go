//go:build linux || darwin

package vmimage

import (
	"os"

	"golang.org/x/sys/unix"
)

// nextData is where the first data at or after off begins (the file's
// size if none), by lseek(SEEK_DATA) on the descriptor's own offset (the
// unpacker reads and writes with pread/pwrite, which ignore it); ok is
// false when the file system cannot tell.
func nextData(f *os.File, off int64) (int64, bool) {
	next, err := unix.Seek(int(f.Fd()), off, unix.SEEK_DATA)
	if err == unix.ENXIO {
		// No data after off.
		fi, serr := f.Stat()
		if serr != nil {
			return 0, false
		}
		return max(fi.Size(), off), true
	}
	if err != nil {
		return 0, false
	}
	return next, true
}

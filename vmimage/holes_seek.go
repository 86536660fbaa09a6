//go:build linux || darwin

package vmimage

import (
	"os"

	"golang.org/x/sys/unix"
)

// seekData runs lseek(SEEK_DATA) on its own descriptor's offset (the
// unpacker reads and writes with pread/pwrite, which ignore it). ENXIO:
// no data after off.
func seekData(f *os.File, off int64, whence int) (int64, bool) {
	next, err := unix.Seek(int(f.Fd()), off, whence)
	if err == unix.ENXIO {
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

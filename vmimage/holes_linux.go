package vmimage

import (
	"os"

	"golang.org/x/sys/unix"
)

// punchHole turns [off, off+n) of f back into a hole, so that it reads as
// zeros and takes no space, as a fresh sparse file's range does.
func punchHole(f *os.File, off, n int64) error {
	if n <= 0 {
		return nil
	}
	err := unix.Fallocate(int(f.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, off, n)
	if err == unix.EOPNOTSUPP {
		return zeroData(f, off, n)
	}
	return err
}

// nextData is where the first data at or after off begins (the file's
// size if none); ok is false when the file system cannot tell.
func nextData(f *os.File, off int64) (int64, bool) {
	return seekData(f, off, unix.SEEK_DATA)
}

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

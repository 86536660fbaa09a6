//go:build linux || darwin || freebsd

package snapshotter

import (
	"errors"
	"os"

	"golang.org/x/sys/unix"
)

// DataRanges calls fn for each range of f that holds data, as
// lseek(SEEK_DATA/SEEK_HOLE) reports it, in order. Where the file system
// does not support them (EINVAL, ENOTSUP) the whole file is one range; the
// copy then still skips all-zero blocks.
func DataRanges(f *os.File, size int64, fn func(start, end int64) error) error {
	fd := int(f.Fd())
	for off := int64(0); off < size; {
		start, err := unix.Seek(fd, off, unix.SEEK_DATA)
		if err != nil {
			if errors.Is(err, unix.ENXIO) {
				return nil // no data after off: the rest is a hole
			}
			if off == 0 && (errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOTSUP) || errors.Is(err, unix.EOPNOTSUPP)) {
				return fn(0, size)
			}
			return &os.PathError{Op: "seek data", Path: f.Name(), Err: err}
		}
		if start >= size {
			return nil
		}
		end, err := unix.Seek(fd, start, unix.SEEK_HOLE)
		if err != nil {
			return &os.PathError{Op: "seek hole", Path: f.Name(), Err: err}
		}
		// The file may have grown since Stat; copy what Stat said.
		end = min(end, size)
		if err := fn(start, end); err != nil {
			return err
		}
		off = end
	}
	return nil
}

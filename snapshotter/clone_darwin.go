//go:build darwin

package snapshotter

import (
	"errors"
	"os"

	"golang.org/x/sys/unix"
)

// reflink creates dst as a clonefile(2) of src (APFS). clonefile creates
// dst itself and leaves nothing behind when it fails. CLONE_NOFOLLOW: src
// is a regular file found by a directory walk, never follow a link that
// replaced it.
func reflink(src, dst string) error {
	if err := unix.Clonefile(src, dst, unix.CLONE_NOFOLLOW); err != nil {
		return &os.PathError{Op: "clonefile", Path: dst, Err: err}
	}
	return nil
}

// reflinkUnsupported reports whether clonefile failed because the volume
// cannot clone (HFS+, exFAT, SMB: ENOTSUP) or src and dst are on two
// volumes (EXDEV), so a copy will do. Darwin's ENOTSUP and EOPNOTSUPP are
// different numbers; accept both.
func reflinkUnsupported(err error) bool {
	return errors.Is(err, unix.ENOTSUP) || errors.Is(err, unix.EOPNOTSUPP) ||
		errors.Is(err, unix.EXDEV) || errors.Is(err, unix.EINVAL) ||
		errors.Is(err, unix.ENOTTY)
}

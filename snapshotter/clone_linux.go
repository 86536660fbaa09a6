//go:build linux

package snapshotter

import (
	"errors"
	"os"

	"golang.org/x/sys/unix"
)

// reflink creates dst sharing src's extents with the FICLONE ioctl (XFS
// with reflink=1, btrfs, bcachefs, OCFS2...). On failure dst is removed.
func reflink(src, dst string) (err error) {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	defer func() {
		if cerr := out.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			_ = os.Remove(dst)
		}
	}()
	if err := unix.IoctlFileClone(int(out.Fd()), int(in.Fd())); err != nil {
		return &os.PathError{Op: "ficlone", Path: dst, Err: err}
	}
	return nil
}

// reflinkUnsupported reports whether a reflink failed because the file
// system cannot do it here, so a copy will do:
// EOPNOTSUPP (ext4, tmpfs, XFS without reflink), EXDEV (two file systems),
// EINVAL (e.g. a file system that has the ioctl but not for these files),
// ENOTTY (the file system has no such ioctl), ENOSYS (very old kernels).
func reflinkUnsupported(err error) bool {
	return errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.EXDEV) ||
		errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOTTY) ||
		errors.Is(err, unix.ENOSYS)
}

//go:build !linux

package safefs

import (
	"errors"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// RemoveAll removes path and everything below it, like os.RemoveAll,
// but never below a mount point (a directory on another device than its
// parent: macOS has no bind mounts, so that is every mount point there):
// it stops with an error wrapping ErrMountPoint at the first one.
// Symlinks are removed, never followed. A missing path is no error.
func RemoveAll(path string) error {
	path = filepath.Clean(path)
	pfd, err := unix.Open(filepath.Dir(path), unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if errors.Is(err, unix.ENOENT) {
		return nil
	}
	if err != nil {
		return &os.PathError{Op: "open", Path: filepath.Dir(path), Err: err}
	}
	defer unix.Close(pfd)
	return removeEntry(pfd, filepath.Base(path), path)
}

func removeEntry(dirfd int, name, path string) error {
	var st unix.Stat_t
	if err := unix.Fstatat(dirfd, name, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		if err == unix.ENOENT {
			return nil
		}
		return &os.PathError{Op: "stat", Path: path, Err: err}
	}
	if st.Mode&unix.S_IFMT != unix.S_IFDIR {
		if err := unix.Unlinkat(dirfd, name, 0); err != nil && err != unix.ENOENT {
			return &os.PathError{Op: "unlink", Path: path, Err: err}
		}
		return nil
	}
	var pst unix.Stat_t
	if err := unix.Fstat(dirfd, &pst); err != nil {
		return &os.PathError{Op: "stat", Path: filepath.Dir(path), Err: err}
	}
	for attempt := 0; ; attempt++ {
		fd, err := unix.Openat(dirfd, name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		if err == unix.ENOENT {
			return nil
		}
		if err != nil {
			return &os.PathError{Op: "open", Path: path, Err: err}
		}
		var cst unix.Stat_t
		if err := unix.Fstat(fd, &cst); err != nil {
			unix.Close(fd)
			return &os.PathError{Op: "stat", Path: path, Err: err}
		}
		if cst.Dev != pst.Dev {
			unix.Close(fd)
			return mountPointError(path)
		}
		dir := os.NewFile(uintptr(fd), path)
		names, err := dir.Readdirnames(-1)
		if err == nil {
			for _, n := range names {
				if err = removeEntry(fd, n, filepath.Join(path, n)); err != nil {
					break
				}
			}
		}
		dir.Close()
		if err != nil {
			return err
		}
		err = unix.Unlinkat(dirfd, name, unix.AT_REMOVEDIR)
		switch {
		case err == nil || err == unix.ENOENT:
			return nil
		case err == unix.EBUSY:
			return mountPointError(path)
		case err == unix.ENOTEMPTY && attempt < 3:
			continue
		}
		return &os.PathError{Op: "rmdir", Path: path, Err: err}
	}
}

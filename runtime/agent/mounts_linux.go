package agent

import (
	"errors"
	"fmt"
	"os"
	"strconv"

	"golang.org/x/sys/unix"
)

// openNoSymlinks opens path (absolute) as an O_PATH handle without
// following any symbolic link on the way or at its end: a masked or
// read-only path means that path, never where a link in the container's
// tree points. (nil, nil) when it does not exist.
func openNoSymlinks(path string) (*os.File, error) {
	fd, err := unix.Openat2(unix.AT_FDCWD, path, &unix.OpenHow{
		Flags:   unix.O_PATH | unix.O_CLOEXEC | unix.O_NOFOLLOW,
		Resolve: unix.RESOLVE_NO_SYMLINKS | unix.RESOLVE_NO_MAGICLINKS,
	})
	switch {
	case errors.Is(err, unix.ENOENT), errors.Is(err, unix.ENOTDIR):
		return nil, nil
	case errors.Is(err, unix.ELOOP):
		return nil, fmt.Errorf("%s is or passes through a symbolic link; name the path the link leads to", path)
	case err != nil:
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	// O_PATH|O_NOFOLLOW opens a link at the end itself instead of
	// failing: refuse it the same.
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if st.Mode&unix.S_IFMT == unix.S_IFLNK {
		unix.Close(fd)
		return nil, fmt.Errorf("%s is or passes through a symbolic link; name the path the link leads to", path)
	}
	return os.NewFile(uintptr(fd), path), nil
}

// fdPath names an open file for mount(2), which follows the magic link to
// exactly that file.
func fdPath(f *os.File) string { return "/proc/self/fd/" + strconv.Itoa(int(f.Fd())) }

// runMountStep carries out one step of mountPlan in the helper's own
// mount namespace. Missing paths are skipped, as runc does.
func runMountStep(s mountStep) error {
	switch s.kind {
	case stepProc:
		if err := unix.Mount("proc", "/proc", "proc", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, ""); err != nil {
			return fmt.Errorf("mounting /proc for the container's PID namespace: %w", err)
		}
		return nil
	case stepRORoot:
		if err := unix.Mount("", "/", "", unix.MS_BIND|unix.MS_REMOUNT|unix.MS_RDONLY, ""); err != nil {
			return fmt.Errorf("read-only root: %w", err)
		}
		return nil
	}
	f, err := openNoSymlinks(s.path)
	if err != nil || f == nil {
		return err
	}
	defer f.Close()
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		return fmt.Errorf("%s: %w", s.path, err)
	}
	switch s.kind {
	case stepMask:
		if st.Mode&unix.S_IFMT == unix.S_IFDIR {
			err = unix.Mount("tmpfs", fdPath(f), "tmpfs", unix.MS_RDONLY|unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, "size=0")
		} else {
			err = unix.Mount("/dev/null", fdPath(f), "", unix.MS_BIND, "")
		}
		if err != nil {
			return fmt.Errorf("masking %s: %w", s.path, err)
		}
	case stepReadonly:
		if err := unix.Mount(fdPath(f), fdPath(f), "", unix.MS_BIND|unix.MS_REC, ""); err != nil {
			return fmt.Errorf("read-only path %s: %w", s.path, err)
		}
		// The handle still names the file under the new bind: open the
		// path again to reach the bind itself.
		top, err := openNoSymlinks(s.path)
		if err != nil || top == nil {
			return fmt.Errorf("read-only path %s: reopening after the bind: %v", s.path, err)
		}
		defer top.Close()
		if err := unix.Mount("", fdPath(top), "", unix.MS_BIND|unix.MS_REMOUNT|unix.MS_RDONLY, ""); err != nil {
			return fmt.Errorf("read-only path %s: %w", s.path, err)
		}
	}
	return nil
}

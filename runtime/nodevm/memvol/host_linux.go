package memvol

import (
	"fmt"
	"os"
	"strconv"

	"golang.org/x/sys/unix"

	"github.com/macvz/macvz/runtime/safefs"
)

// openVolume opens root/rel without following a symlink or leaving root.
func openVolume(root, rel string) (int, error) {
	d, err := safefs.OpenRoot(root)
	if err != nil {
		return -1, err
	}
	defer d.Close()
	fd, err := unix.Openat2(d.Fd(), rel, &unix.OpenHow{
		Flags:   unix.O_PATH | unix.O_DIRECTORY | unix.O_NOFOLLOW | unix.O_CLOEXEC,
		Resolve: unix.RESOLVE_BENEATH | unix.RESOLVE_NO_SYMLINKS | unix.RESOLVE_NO_MAGICLINKS,
	})
	if err != nil {
		return -1, &os.PathError{Op: "open", Path: root + "/" + rel, Err: err}
	}
	return fd, nil
}

// isTmpfsRoot reports whether fd is the root of a tmpfs mount.
func isTmpfsRoot(fd int) (bool, error) {
	var stx unix.Statx_t
	if err := unix.Statx(fd, "", unix.AT_EMPTY_PATH, unix.STATX_BASIC_STATS, &stx); err != nil {
		return false, err
	}
	var sfs unix.Statfs_t
	if err := unix.Fstatfs(fd, &sfs); err != nil {
		return false, err
	}
	return stx.Attributes&unix.STATX_ATTR_MOUNT_ROOT != 0 && sfs.Type == unix.TMPFS_MAGIC, nil
}

// mountTmpfs mounts a tmpfs of at most size bytes (0: the default) at
// root/rel unless one is there: nosuid and nodev, as kubelet's own.
func mountTmpfs(root, rel string, size int64) (bool, error) {
	fd, err := openVolume(root, rel)
	if err != nil {
		return false, err
	}
	defer unix.Close(fd)
	if ok, err := isTmpfsRoot(fd); err != nil || ok {
		return ok, err
	}
	fs, err := unix.Fsopen("tmpfs", unix.FSOPEN_CLOEXEC)
	if err != nil {
		return false, fmt.Errorf("tmpfs: %w", err)
	}
	defer unix.Close(fs)
	if size > 0 {
		if err := unix.FsconfigSetString(fs, "size", strconv.FormatInt(size, 10)); err != nil {
			return false, fmt.Errorf("tmpfs size=%d: %w", size, err)
		}
	}
	if err := unix.FsconfigCreate(fs); err != nil {
		return false, fmt.Errorf("tmpfs: %w", err)
	}
	m, err := unix.Fsmount(fs, unix.FSMOUNT_CLOEXEC, unix.MOUNT_ATTR_NOSUID|unix.MOUNT_ATTR_NODEV)
	if err != nil {
		return false, fmt.Errorf("tmpfs: %w", err)
	}
	defer unix.Close(m)
	// Attached below the shared pods directory, the mount reaches the
	// node VM's view of it (a slave).
	if err := unix.MoveMount(m, "", fd, "", unix.MOVE_MOUNT_F_EMPTY_PATH|unix.MOVE_MOUNT_T_EMPTY_PATH); err != nil {
		return false, fmt.Errorf("mounting a tmpfs on %s/%s: %w", root, rel, err)
	}
	return true, nil
}

// unmountTmpfs unmounts the tmpfs at root/rel, if one is there.
func unmountTmpfs(root, rel string) (bool, error) {
	fd, err := openVolume(root, rel)
	if os.IsNotExist(err) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	defer unix.Close(fd)
	if ok, err := isTmpfsRoot(fd); err != nil || !ok {
		return false, err
	}
	// The descriptor names the mount itself; its path could have been
	// swapped since.
	if err := unix.Unmount("/proc/self/fd/"+strconv.Itoa(fd), unix.MNT_DETACH); err != nil {
		return false, fmt.Errorf("unmounting the tmpfs on %s/%s: %w", root, rel, err)
	}
	return true, nil
}

// listTmpfs is every tmpfs mount point in the daemon's mount table.
func listTmpfs() []string {
	ms, _ := safefs.Mounts()
	var out []string
	for _, m := range ms {
		if m.FSType == "tmpfs" {
			out = append(out, m.Point)
		}
	}
	return out
}

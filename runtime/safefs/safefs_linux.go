package safefs

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"

	"golang.org/x/sys/unix"
)

// beneath resolves a name inside a directory fd and nowhere else: no
// "..", no absolute path, no symlink (the last component included), no
// magic link, no mount point.
const beneath = unix.RESOLVE_BENEATH | unix.RESOLVE_NO_SYMLINKS | unix.RESOLVE_NO_MAGICLINKS | unix.RESOLVE_NO_XDEV

func openBeneath(dirfd int, name string, flags uint64, mode uint64) (int, error) {
	for {
		fd, err := unix.Openat2(dirfd, name, &unix.OpenHow{Flags: flags | unix.O_CLOEXEC, Mode: mode, Resolve: beneath})
		if err == unix.EINTR || err == unix.EAGAIN {
			// EAGAIN: a rename raced the lookup; try again.
			continue
		}
		return fd, err
	}
}

// describe turns openat2's refusals into errors that say what was found.
func describe(path string, err error) error {
	switch err {
	case unix.ELOOP:
		return planted(path, ErrSymlink)
	case unix.EXDEV:
		return planted(path, ErrMountPoint)
	}
	return &os.PathError{Op: "open", Path: path, Err: err}
}

// Dir is an open directory that names are resolved beneath.
type Dir struct {
	fd   int
	path string // for messages only
}

// OpenRoot opens dir, which the host owns (symlinks in it are followed
// once, here: /var/run -> /run), as the root names are resolved beneath.
func OpenRoot(dir string) (*Dir, error) {
	fd, err := unix.Open(dir, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, &os.PathError{Op: "open", Path: dir, Err: err}
	}
	return &Dir{fd: fd, path: dir}, nil
}

// Close releases the directory.
func (d *Dir) Close() error { return unix.Close(d.fd) }

// Path is where the directory was when it was opened.
func (d *Dir) Path() string { return d.path }

// Fd is the directory's descriptor (an O_PATH one).
func (d *Dir) Fd() int { return d.fd }

// MkdirOpen makes name (one component) in d unless it exists, and opens
// it; a symlink, a mount point or anything but a directory there is an
// error.
func (d *Dir) MkdirOpen(name string, perm os.FileMode) (*Dir, error) {
	p := filepath.Join(d.path, name)
	if err := oneComponent(name); err != nil {
		return nil, err
	}
	if err := unix.Mkdirat(d.fd, name, uint32(perm.Perm())); err != nil && err != unix.EEXIST {
		return nil, &os.PathError{Op: "mkdir", Path: p, Err: err}
	}
	fd, err := openBeneath(d.fd, name, unix.O_PATH|unix.O_DIRECTORY, 0)
	if err != nil {
		if err == unix.ENOTDIR {
			return nil, planted(p, errors.New("exists and is not a directory"))
		}
		return nil, describe(p, err)
	}
	return &Dir{fd: fd, path: p}, nil
}

// MountPoint makes name (one component) in d as a mount point for a
// directory (dir) or a file, unless a real one is there already, and
// returns an O_PATH descriptor of it to mount onto. Whoever else can
// write d may have put a symlink or something else there: that is an
// error, never followed.
func (d *Dir) MountPoint(name string, dir bool) (*os.File, error) {
	p := filepath.Join(d.path, name)
	if err := oneComponent(name); err != nil {
		return nil, err
	}
	if dir {
		if err := unix.Mkdirat(d.fd, name, 0o700); err != nil && err != unix.EEXIST {
			return nil, &os.PathError{Op: "mkdir", Path: p, Err: err}
		}
	} else {
		fd, err := openBeneath(d.fd, name, unix.O_CREAT|unix.O_WRONLY|unix.O_NOFOLLOW|unix.O_NONBLOCK, 0o600)
		if err != nil {
			return nil, describe(p, err)
		}
		unix.Close(fd)
	}
	fd, err := openBeneath(d.fd, name, unix.O_PATH|unix.O_NOFOLLOW, 0)
	if err != nil {
		return nil, describe(p, err)
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		unix.Close(fd)
		return nil, &os.PathError{Op: "stat", Path: p, Err: err}
	}
	want := uint32(unix.S_IFREG)
	if dir {
		want = unix.S_IFDIR
	}
	if st.Mode&unix.S_IFMT != want {
		unix.Close(fd)
		if st.Mode&unix.S_IFMT == unix.S_IFLNK {
			return nil, planted(p, ErrSymlink)
		}
		return nil, planted(p, fmt.Errorf("exists and is not a %s", map[bool]string{true: "directory", false: "regular file"}[dir]))
	}
	return os.NewFile(uintptr(fd), p), nil
}

func oneComponent(name string) error {
	if name == "" || name == "." || name == ".." || filepath.Base(name) != name {
		return fmt.Errorf("%q is not a single path component", name)
	}
	return nil
}

// BindOnto mounts a recursive bind of src onto target (from MountPoint):
// private (a mount made later in src does not come through, one made in
// the bind does not go out), nosuid and nodev on every mount of the tree
// (a guest that writes a device node into a volume cannot open the host
// device through it), and read-only on every mount of the tree when
// readOnly (a submount of a read-only volume is read-only too). The bind
// is made detached and configured before it is attached, so there is no
// moment when it is writable or shared.
func BindOnto(src string, target *os.File, readOnly bool) error {
	tree, err := unix.OpenTree(unix.AT_FDCWD, src, unix.OPEN_TREE_CLONE|unix.OPEN_TREE_CLOEXEC|unix.AT_RECURSIVE)
	if err != nil {
		return &os.PathError{Op: "open_tree", Path: src, Err: err}
	}
	defer unix.Close(tree)
	attr := unix.MountAttr{Attr_set: unix.MOUNT_ATTR_NOSUID | unix.MOUNT_ATTR_NODEV, Propagation: unix.MS_PRIVATE}
	if readOnly {
		attr.Attr_set |= unix.MOUNT_ATTR_RDONLY
	}
	if err := unix.MountSetattr(tree, "", unix.AT_EMPTY_PATH|unix.AT_RECURSIVE, &attr); err != nil {
		return fmt.Errorf("setting the attributes of the bind of %s: %w", src, err)
	}
	if err := unix.MoveMount(tree, "", int(target.Fd()), "", unix.MOVE_MOUNT_F_EMPTY_PATH|unix.MOVE_MOUNT_T_EMPTY_PATH); err != nil {
		return fmt.Errorf("attaching the bind of %s at %s: %w", src, target.Name(), err)
	}
	return nil
}

// MountTmpfs mounts a private tmpfs of at most size bytes and inodes
// files on dir: nosuid, nodev, noexec, mode 0700.
func MountTmpfs(dir string, size int64, inodes int) error {
	fs, err := unix.Fsopen("tmpfs", unix.FSOPEN_CLOEXEC)
	if err != nil {
		return fmt.Errorf("tmpfs for %s: %w", dir, err)
	}
	defer unix.Close(fs)
	for _, kv := range [][2]string{{"size", strconv.FormatInt(size, 10)}, {"nr_inodes", strconv.Itoa(inodes)}, {"mode", "0700"}} {
		if err := unix.FsconfigSetString(fs, kv[0], kv[1]); err != nil {
			return fmt.Errorf("tmpfs for %s: %s=%s: %w", dir, kv[0], kv[1], err)
		}
	}
	if err := unix.FsconfigCreate(fs); err != nil {
		return fmt.Errorf("tmpfs for %s: %w", dir, err)
	}
	m, err := unix.Fsmount(fs, unix.FSMOUNT_CLOEXEC, unix.MOUNT_ATTR_NOSUID|unix.MOUNT_ATTR_NODEV|unix.MOUNT_ATTR_NOEXEC)
	if err != nil {
		return fmt.Errorf("tmpfs for %s: %w", dir, err)
	}
	defer unix.Close(m)
	if err := unix.MountSetattr(m, "", unix.AT_EMPTY_PATH, &unix.MountAttr{Propagation: unix.MS_PRIVATE}); err != nil {
		return fmt.Errorf("tmpfs for %s: %w", dir, err)
	}
	if err := unix.MoveMount(m, "", unix.AT_FDCWD, dir, unix.MOVE_MOUNT_F_EMPTY_PATH); err != nil {
		return fmt.Errorf("mounting a tmpfs on %s: %w", dir, err)
	}
	return nil
}

// IsMountPoint reports whether name in the host-owned directory dir is
// the root of a mount.
func IsMountPoint(path string) (bool, error) {
	d, err := OpenRoot(filepath.Dir(path))
	if err != nil {
		return false, err
	}
	defer d.Close()
	fd, err := unix.Openat2(d.fd, filepath.Base(path), &unix.OpenHow{Flags: unix.O_PATH | unix.O_NOFOLLOW | unix.O_CLOEXEC, Resolve: unix.RESOLVE_BENEATH | unix.RESOLVE_NO_XDEV})
	if err == unix.EXDEV {
		return true, nil
	}
	if err != nil {
		return false, &os.PathError{Op: "open", Path: path, Err: err}
	}
	unix.Close(fd)
	return false, nil
}

// RemoveAll removes path and everything below it, like os.RemoveAll,
// but never below a mount point: it stops with an error wrapping
// ErrMountPoint (and errdefs.ErrFailedPrecondition) at the first one
// and leaves what is mounted there alone. Symlinks are removed, never
// followed. The directory path is in is the host's and may be reached
// through symlinks. A missing path is no error.
func RemoveAll(path string) error {
	path = filepath.Clean(path)
	parent, err := OpenRoot(filepath.Dir(path))
	if errors.Is(err, unix.ENOENT) {
		return nil
	}
	if err != nil {
		return err
	}
	defer parent.Close()
	return removeEntry(parent.fd, filepath.Base(path), path)
}

// removeEntry removes name in dirfd: a file, or a directory and what is
// below it.
func removeEntry(dirfd int, name, path string) error {
	err := unix.Unlinkat(dirfd, name, 0)
	switch err {
	case nil, unix.ENOENT:
		return nil
	case unix.EISDIR, unix.EPERM:
		// A directory (unlink(2) of one is EISDIR on Linux; EPERM
		// elsewhere).
	default:
		return &os.PathError{Op: "unlink", Path: path, Err: err}
	}
	for attempt := 0; ; attempt++ {
		if err := removeContents(dirfd, name, path); err != nil {
			return err
		}
		err := unix.Unlinkat(dirfd, name, unix.AT_REMOVEDIR)
		switch {
		case err == nil || err == unix.ENOENT:
			return nil
		case err == unix.EBUSY:
			return mountPointError(path)
		case err == unix.ENOTEMPTY && attempt < 3:
			// Something was made in it meanwhile: empty it again.
			continue
		}
		return &os.PathError{Op: "rmdir", Path: path, Err: err}
	}
}

// removeContents removes what the directory name in dirfd holds.
func removeContents(dirfd int, name, path string) error {
	fd, err := openBeneath(dirfd, name, unix.O_RDONLY|unix.O_DIRECTORY, 0)
	switch err {
	case nil:
	case unix.ENOENT:
		return nil
	case unix.EXDEV:
		return mountPointError(path)
	default:
		return describe(path, err)
	}
	dir := os.NewFile(uintptr(fd), path)
	defer dir.Close()
	// All names first: removing entries while reading the directory
	// can make the reading skip some.
	names, err := dir.Readdirnames(-1)
	if err != nil {
		return err
	}
	for _, n := range names {
		if err := removeEntry(fd, n, filepath.Join(path, n)); err != nil {
			return err
		}
	}
	return nil
}

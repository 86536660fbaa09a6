package agentinstall

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/containerd/errdefs"
	"golang.org/x/sys/unix"
)

// The Data volume of a VM disk is the guest's, so whoever made the image
// chose its contents: a path in it must never be resolved by the host
// kernel from the mount point down, or a symlink such as usr/local/bin ->
// /usr/local/bin would have the host's root write a LaunchDaemon onto the
// host. Every operation below walks from a descriptor of the volume's
// root one component at a time with O_NOFOLLOW and O_DIRECTORY, creates
// files with O_EXCL|O_NOFOLLOW, and renames within one directory
// descriptor. It uses only calls golang.org/x/sys/unix has on both darwin
// and linux, so that it is tested here.

// openRoot opens the directory the volume is mounted on.
func openRoot(dir string) (int, error) {
	fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, fmt.Errorf("opening the mounted volume %s: %w", dir, err)
	}
	return fd, nil
}

// splitRel checks a slash-separated path relative to the volume's root:
// no empty, "." or ".." component, not absolute.
func splitRel(rel string) ([]string, error) {
	parts := strings.Split(rel, "/")
	for _, p := range parts {
		if p == "" || p == "." || p == ".." {
			return nil, fmt.Errorf("path %q in the guest is not a plain relative path: %w", rel, errdefs.ErrInvalidArgument)
		}
	}
	return parts, nil
}

// openDirBeneath opens the directory rel beneath the directory root.
// With chown it creates missing components (mode 0755, owned by root
// through chown); without, a missing component gives -1 and no error. It
// refuses a component that is a symlink or not a directory. The caller
// closes the descriptor.
func openDirBeneath(root int, rel string, chown func(fd, uid, gid int) error) (int, error) {
	parts, err := splitRel(rel)
	if err != nil {
		return -1, err
	}
	cur, err := unix.Dup(root)
	if err != nil {
		return -1, err
	}
	for i, name := range parts {
		where := "/" + strings.Join(parts[:i+1], "/")
		var next int
		var created bool
		if chown == nil {
			next, err = unix.Openat(cur, name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
			if err == unix.ENOENT {
				unix.Close(cur)
				return -1, nil
			}
		} else {
			next, created, err = openOrMakeDir(cur, name)
		}
		if err != nil {
			err = refusal(cur, name, where, err)
		}
		unix.Close(cur)
		if err != nil {
			return -1, err
		}
		if created {
			// mkdirat applies the umask and, on macOS, the parent's
			// group: set both as the guest expects.
			err := chown(next, 0, 0)
			if err == nil {
				err = unix.Fchmod(next, 0o755)
			}
			if err != nil {
				unix.Close(next)
				return -1, fmt.Errorf("setting up the new directory %s in the guest: %w", where, err)
			}
		}
		cur = next
	}
	return cur, nil
}

// openOrMakeDir opens the directory name in dir without following a
// symlink, creating it when it does not exist.
func openOrMakeDir(dir int, name string) (fd int, created bool, err error) {
	const flags = unix.O_RDONLY | unix.O_DIRECTORY | unix.O_NOFOLLOW | unix.O_CLOEXEC
	for attempt := 0; ; attempt++ {
		fd, err := unix.Openat(dir, name, flags, 0)
		if err == nil {
			return fd, created, nil
		}
		if err != unix.ENOENT || attempt > 0 {
			return -1, false, err
		}
		switch err := unix.Mkdirat(dir, name, 0o755); err {
		case nil:
			created = true
		case unix.EEXIST:
			// Made meanwhile (or a dangling symlink): open tells which.
		default:
			return -1, false, err
		}
	}
}

// refusal words the error of opening name in dir, the directory where
// in the guest. O_NOFOLLOW|O_DIRECTORY on a symlink fails with ELOOP or
// ENOTDIR depending on the system: lstat tells which it was.
func refusal(dir int, name, where string, err error) error {
	if !errors.Is(err, unix.ELOOP) && !errors.Is(err, unix.ENOTDIR) && !errors.Is(err, unix.EMLINK) {
		return fmt.Errorf("opening %s in the guest's volume: %w", where, err)
	}
	var st unix.Stat_t
	if serr := unix.Fstatat(dir, name, &st, unix.AT_SYMLINK_NOFOLLOW); serr == nil && uint32(st.Mode)&unix.S_IFMT == unix.S_IFLNK {
		return fmt.Errorf("%s in the guest's volume is a symbolic link; refusing to follow it, as it may point out of the volume onto the host: %w", where, errdefs.ErrInvalidArgument)
	}
	return fmt.Errorf("%s in the guest's volume is not a directory: %w", where, errdefs.ErrInvalidArgument)
}

// writeBeneath writes rel beneath the directory root, owned by uid 0 and
// gid 0 (through chown) with mode: into a new temporary file in rel's
// directory, renamed over rel once complete, so that an interrupted copy
// leaves the old file. rel's directories are created when missing; a
// symlink anywhere on the way is refused, and one at rel itself is
// replaced, not followed.
func writeBeneath(root int, rel string, fill func(io.Writer) error, mode os.FileMode, chown func(fd, uid, gid int) error) error {
	parts, err := splitRel(rel)
	if err != nil {
		return err
	}
	name := parts[len(parts)-1]
	dir := root
	if len(parts) > 1 {
		if dir, err = openDirBeneath(root, strings.Join(parts[:len(parts)-1], "/"), chown); err != nil {
			return err
		}
		defer unix.Close(dir)
	}
	var rnd [8]byte
	if _, err := rand.Read(rnd[:]); err != nil {
		return err
	}
	tmp := ".macvz-" + hex.EncodeToString(rnd[:])
	fd, err := unix.Openat(dir, tmp, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return fmt.Errorf("creating a file in the directory of /%s in the guest: %w", rel, err)
	}
	f := os.NewFile(uintptr(fd), "/"+rel)
	err = fill(f)
	if err == nil {
		err = f.Sync()
	}
	if err == nil {
		// Owner first: a chown may clear mode bits.
		err = chown(fd, 0, 0)
	}
	if err == nil {
		err = unix.Fchmod(fd, uint32(mode.Perm()))
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = unix.Renameat(dir, tmp, dir, name)
	}
	if err != nil {
		unix.Unlinkat(dir, tmp, 0)
		return fmt.Errorf("writing /%s in the guest: %w", rel, err)
	}
	return nil
}

package cri

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"syscall"
	"time"

	"github.com/containerd/errdefs"
)

// listenUnix creates the CRI socket atomically: it is bound under a
// temporary name, given mode 0660, and renamed into place, so no client
// ever sees it with a wider mode, and a stale socket left by a crash is
// replaced. A socket that still answers belongs to a running daemon: that
// is refused rather than stolen.
func listenUnix(path string) (*net.UnixListener, error) { return listenUnixMode(path, 0o660) }

// listenUnixMode is listenUnix with the socket's mode (the admin socket:
// 0600).
func listenUnixMode(path string, mode os.FileMode) (*net.UnixListener, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o711); err != nil {
		return nil, fmt.Errorf("socket directory: %w", err)
	}
	if err := refuseLiveSocket(path); err != nil {
		return nil, err
	}
	tmp := filepath.Join(filepath.Dir(path), "."+filepath.Base(path)+"."+strconv.Itoa(os.Getpid()))
	_ = os.Remove(tmp)
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: tmp, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", path, err)
	}
	// Close must not unlink tmp: after the rename the name belongs to path.
	ln.SetUnlinkOnClose(false)
	if err := os.Chmod(tmp, mode); err != nil {
		ln.Close()
		os.Remove(tmp)
		return nil, err
	}
	if err := os.Rename(tmp, path); err != nil {
		ln.Close()
		os.Remove(tmp)
		return nil, fmt.Errorf("install socket %s: %w", path, err)
	}
	return ln, nil
}

// refuseLiveSocket fails when path answers connections: another daemon
// owns it (and its root).
func refuseLiveSocket(path string) error {
	if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
		c.Close()
		return fmt.Errorf("%w: %s is served by a running process; stop it first", errdefs.ErrAlreadyExists, path)
	}
	return nil
}

// removeSocketIfOurs unlinks path unless another daemon has replaced it
// since we created it (same inode check).
func removeSocketIfOurs(path string, ours os.FileInfo) {
	fi, err := os.Lstat(path)
	if err != nil || !os.SameFile(fi, ours) {
		return
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, syscall.ENOENT) {
		return
	}
}

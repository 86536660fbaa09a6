package shim

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
)

// maxSunPath is the longest socket path bind/connect take (sun_path less
// its terminating NUL): 107 on Linux, 103 on darwin.
var maxSunPath = 103

// listenSocket listens on a new unix socket at path, mode 0600. It binds
// a temporary name, sets the mode and renames it into place, so the
// socket is never reachable with a looser mode. The listener does not
// unlink anything on Close: the caller removes path.
func listenSocket(path string) (*net.UnixListener, error) {
	tmp := path + "." + strconv.Itoa(os.Getpid()) + ".tmp"
	os.Remove(tmp)
	var l *net.UnixListener
	err := withShortPath(tmp, func(p string) error {
		var err error
		l, err = net.ListenUnix("unix", &net.UnixAddr{Name: p, Net: "unix"})
		return err
	})
	if err != nil {
		return nil, err
	}
	l.SetUnlinkOnClose(false)
	if err := os.Chmod(tmp, 0o600); err != nil {
		l.Close()
		os.Remove(tmp)
		return nil, err
	}
	if err := os.Rename(tmp, path); err != nil {
		l.Close()
		os.Remove(tmp)
		return nil, err
	}
	return l, nil
}

// dialSocket connects to the unix socket at path.
func dialSocket(ctx context.Context, path string) (net.Conn, error) {
	var c net.Conn
	err := withShortPath(path, func(p string) error {
		var d net.Dialer
		var err error
		c, err = d.DialContext(ctx, "unix", p)
		return err
	})
	return c, err
}

// withShortPath calls f with path, or, when path is too long for
// sun_path, with an equivalent short path through /proc/self/fd (Linux).
func withShortPath(path string, f func(string) error) error {
	if len(path) <= maxSunPath {
		return f(path)
	}
	if !procFDPaths {
		return fmt.Errorf("socket path %s is longer than %d bytes", path, maxSunPath)
	}
	d, err := os.Open(filepath.Dir(path))
	if err != nil {
		return err
	}
	defer d.Close()
	short := fmt.Sprintf("/proc/self/fd/%d/%s", d.Fd(), filepath.Base(path))
	if len(short) > maxSunPath {
		return fmt.Errorf("socket name %s is too long", filepath.Base(path))
	}
	return f(short)
}

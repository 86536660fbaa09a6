//go:build linux

package netplugin

import (
	"fmt"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// LockPath serializes the plugin's invocations on this host: the bridge,
// the taps and the nftables table are read-modify-write.
var LockPath = "/run/lock/macvz-net.lock"

// lock takes the plugin lock; the returned func releases it.
func lock() (func(), error) {
	if err := os.MkdirAll(filepath.Dir(LockPath), 0o755); err != nil {
		return nil, fmt.Errorf("lock: %w", err)
	}
	f, err := os.OpenFile(LockPath, os.O_RDWR|os.O_CREATE|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return nil, fmt.Errorf("lock: %w", err)
	}
	for {
		err = unix.Flock(int(f.Fd()), unix.LOCK_EX)
		if err != unix.EINTR {
			break
		}
	}
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("lock %s: %w", LockPath, err)
	}
	return func() { f.Close() }, nil
}

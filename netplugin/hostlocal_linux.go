//go:build linux

package netplugin

import (
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strings"

	"github.com/containernetworking/cni/pkg/types"
	"golang.org/x/sys/unix"
)

// host-local (containernetworking/plugins v1.9.1) does not implement GC
// yet, so the plugin cleans its store itself. The store's layout, as
// host-local's disk backend keeps it: a directory per network under the
// data dir; one file per reserved IP, named by the IP, holding
// "<containerID>\r\n<ifname>" (older versions: just the container ID);
// "last_reserved_ip.<range>" files; and a "lock" file that host-local
// flocks around every change.

// gcHostLocal removes the reservations of attachments not in valid and
// returns how many it removed. A missing store is empty.
func gcHostLocal(dir string, valid []types.GCAttachment) (int, error) {
	if _, err := os.Stat(dir); errors.Is(err, fs.ErrNotExist) {
		return 0, nil
	}
	lk, err := os.OpenFile(filepath.Join(dir, "lock"), os.O_RDWR|os.O_CREATE|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return 0, fmt.Errorf("host-local store %s: %w", dir, err)
	}
	defer lk.Close()
	for {
		err = unix.Flock(int(lk.Fd()), unix.LOCK_EX)
		if err != unix.EINTR {
			break
		}
	}
	if err != nil {
		return 0, fmt.Errorf("host-local store %s: lock: %w", dir, err)
	}

	keep := map[string]bool{}
	keepID := map[string]bool{}
	for _, a := range valid {
		keep[a.ContainerID+"\x00"+a.IfName] = true
		keepID[a.ContainerID] = true
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		return 0, fmt.Errorf("host-local store %s: %w", dir, err)
	}
	removed := 0
	var errs []error
	for _, e := range entries {
		if e.IsDir() || net.ParseIP(e.Name()) == nil {
			continue // lock, last_reserved_ip.*
		}
		p := filepath.Join(dir, e.Name())
		b, err := os.ReadFile(p)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		id, ifname, hasIf := strings.Cut(strings.TrimSpace(string(b)), "\r\n")
		id = strings.TrimSpace(id)
		if (hasIf && keep[id+"\x00"+strings.TrimSpace(ifname)]) || (!hasIf && keepID[id]) {
			continue
		}
		if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
			errs = append(errs, err)
			continue
		}
		removed++
	}
	return removed, errors.Join(errs...)
}

package memvol

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/macvz/macvz/runtime/safefs"
)

// Main is the helper, called as name ("mount" or "umount") with args;
// it returns the exit code (util-linux's: 32 for a failed mount) or does
// not return, having executed the real tool.
func Main(name string, args []string) int {
	var code int
	var err error
	switch name {
	case "mount":
		code, err = mount(args)
	case "umount":
		code, err = umount(args)
	case RestoreName:
		if len(args) == 1 && args[0] == "restore" {
			code, err = restore()
		} else {
			code, err = 2, fmt.Errorf("usage: %s restore", RestoreName)
		}
	default:
		err = fmt.Errorf("called as %q, not mount or umount", name)
		code = 1
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "%s: %v\n", name, err)
	}
	return code
}

// mount handles `mount -t tmpfs [-o OPTS] SOURCE TARGET` below a share,
// kubelet's form; anything else is the real mount's.
func mount(args []string) (int, error) {
	var fstype, opts string
	var pos []string
	for i := 0; i < len(args); i++ {
		switch a := args[i]; {
		case (a == "-t" || a == "-o") && i+1 < len(args):
			if a == "-t" {
				fstype = args[i+1]
			} else {
				opts = args[i+1]
			}
			i++
		case strings.HasPrefix(a, "-"):
			return real("mount", args)
		default:
			pos = append(pos, a)
		}
	}
	if fstype != "tmpfs" || len(pos) != 2 || !onShare(pos[1]) {
		return real("mount", args)
	}
	target := pos[1]
	size, err := sizeOption(opts)
	if err != nil {
		return 32, err
	}
	rep, err := ask(http.MethodPost, Request{Path: target, SizeBytes: size})
	if err != nil {
		return 32, fmt.Errorf("%s: %w", target, err)
	}
	if !rep.Tmpfs {
		// macOS: a plain directory; kubelet finds no mount and asks again
		// at its next sync, which is harmless.
		return 0, nil
	}
	if isMountRoot(target) {
		return 0, nil
	}
	// The host's tmpfs shows through the share; a bind makes the path a
	// mount point here too, so that kubelet sees its tmpfs (9p reports
	// the host's file-system type) and unmounts it when done.
	if err := unix.Mount(target, target, "", unix.MS_BIND, ""); err != nil {
		return 32, fmt.Errorf("%s: binding the host's tmpfs: %w", target, err)
	}
	return 0, nil
}

// umount handles `umount [FLAGS] TARGET` of a path below a share.
func umount(args []string) (int, error) {
	var pos []string
	for _, a := range args {
		if !strings.HasPrefix(a, "-") {
			pos = append(pos, a)
		}
	}
	if len(pos) != 1 || !onShare(pos[0]) {
		return real("umount", args)
	}
	target := pos[0]
	bound := isMountRoot(target)
	if bound {
		if err := unix.Unmount(target, 0); err != nil {
			return 32, fmt.Errorf("%s: %w", target, err)
		}
	}
	rep, err := ask(http.MethodDelete, Request{Path: target})
	if err != nil {
		return 32, fmt.Errorf("%s: %w", target, err)
	}
	if !bound && !rep.Tmpfs {
		// util-linux's words, which mount-utils looks for.
		return 32, fmt.Errorf("%s: not mounted.", target)
	}
	return 0, nil
}

// restore binds onto itself, here, each volume directory the host holds
// a tmpfs at (Reply.Paths). It runs before kubelet starts, in its
// container; the host's side of GuestSocket may not serve yet, so it is
// asked for a while.
func restore() (int, error) {
	var rep Reply
	var err error
	for wait, end := 100*time.Millisecond, time.Now().Add(time.Minute); ; wait = min(2*wait, 2*time.Second) {
		if rep, err = ask(http.MethodGet, Request{}); err == nil || time.Now().After(end) {
			break
		}
		time.Sleep(wait)
	}
	if err != nil {
		return 1, err
	}
	code := 0
	for _, p := range rep.Paths {
		if isMountRoot(p) || !onShare(p) {
			continue
		}
		if err := unix.Mount(p, p, "", unix.MS_BIND, ""); err != nil {
			fmt.Fprintf(os.Stderr, "%s restore: %s: %v\n", RestoreName, p, err)
			code = 1
		}
	}
	return code, nil
}

// onShare reports whether path is below a share from the host: the
// longest mount point containing it is a 9p or virtiofs mount.
func onShare(path string) bool {
	path = filepath.Clean(path)
	ms, err := safefs.Mounts()
	if err != nil {
		return false
	}
	best, fstype := "", ""
	for _, m := range ms {
		if (path == m.Point || strings.HasPrefix(path, strings.TrimSuffix(m.Point, "/")+"/")) && len(m.Point) >= len(best) {
			best, fstype = m.Point, m.FSType
		}
	}
	return fstype == "9p" || fstype == "virtiofs"
}

// isMountRoot reports whether path is the root of a mount here.
func isMountRoot(path string) bool {
	var stx unix.Statx_t
	if err := unix.Statx(unix.AT_FDCWD, path, unix.AT_SYMLINK_NOFOLLOW, unix.STATX_BASIC_STATS, &stx); err != nil {
		return false
	}
	return stx.Attributes&unix.STATX_ATTR_MOUNT_ROOT != 0
}

// ask sends req to the host.
func ask(method string, req Request) (Reply, error) {
	body, _ := json.Marshal(req)
	client := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", GuestSocket)
		},
	}}
	r, err := http.NewRequest(method, "http://macvz/v1/tmpfs", bytes.NewReader(body))
	if err != nil {
		return Reply{}, err
	}
	resp, err := client.Do(r)
	if err != nil {
		return Reply{}, fmt.Errorf("asking the host: %w", err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	if resp.StatusCode != http.StatusOK {
		return Reply{}, fmt.Errorf("the host: %s", strings.TrimSpace(string(b)))
	}
	var rep Reply
	if err := json.Unmarshal(b, &rep); err != nil {
		return Reply{}, fmt.Errorf("the host's answer: %w", err)
	}
	return rep, nil
}

// real executes the image's own tool of that name: the first on PATH
// that is not this helper.
func real(name string, args []string) (int, error) {
	for _, dir := range filepath.SplitList(os.Getenv("PATH")) {
		if dir == "" || filepath.Clean(dir) == HelperDir {
			continue
		}
		p := filepath.Join(dir, name)
		if fi, err := os.Stat(p); err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0 {
			err := syscall.Exec(p, append([]string{name}, args...), os.Environ())
			return 1, fmt.Errorf("executing %s: %w", p, err)
		}
	}
	return 1, errors.New("no " + name + " on PATH besides macvz's helper")
}

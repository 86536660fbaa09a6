package agent

import (
	"context"
	"errors"
	"io/fs"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc/codes"

	api "github.com/macvz/macvz/runtime/agentapi"
)

// DefaultSocketDir is where PortForward's listen makes unix sockets: the
// node VM's kubelet dials DefaultSocketDir/macvz.sock for CRI.
const DefaultSocketDir = "/run/macvz"

// socketName is what a socket in the socket directory may be called: no
// separator, no dot first, so the path cannot leave the directory.
var socketName = regexp.MustCompile(`^[a-zA-Z0-9_-][a-zA-Z0-9._-]{0,63}$`)

// socketCheck is how often a unix guest listener looks whether its
// socket file is still there.
var socketCheck = time.Second

// guestListener is a socket in the guest whose clients PortForward
// streams take, one each. One goroutine accepts; a client waits in conns
// until a stream takes it, so none is lost to a stream that ended while
// waiting. A unix socket whose file is deleted is made again (see keep).
type guestListener struct {
	network, address string
	conns            chan net.Conn
	err              chan struct{} // closed when Accept fails for good
	errOnce          sync.Once

	mu   sync.Mutex
	l    net.Listener
	made os.FileInfo // the unix socket's file as l made it
}

// guestListener returns the listener of addr ("unix:<path>" in the
// socket directory or, for a device plugin, in kubelet's device-plugin
// directory, or "tcp:<loopback address>:<port>"), made on first use.
func (a *agent) guestListener(addr string) (*guestListener, error) {
	network, address, err := a.listenAddr(addr)
	if err != nil {
		return nil, err
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if gl := a.listeners[addr]; gl != nil {
		return gl, nil
	}
	gl := &guestListener{network: network, address: address, conns: make(chan net.Conn), err: make(chan struct{})}
	if network == "unix" {
		// kubelet makes its device-plugin directory 0750; the agent's
		// own is root's alone.
		mode := os.FileMode(0o700)
		if filepath.Dir(address) == filepath.Clean(a.cfg.kubeletPluginDir) {
			mode = 0o750
		}
		if err := os.MkdirAll(filepath.Dir(address), mode); err != nil {
			return nil, errf(codes.Internal, "PortForward: making %s: %v", filepath.Dir(address), err)
		}
		// A socket file left by an earlier agent (the guest's /run
		// survives nothing, but a test's directory may).
		if fi, err := os.Lstat(address); err == nil && fi.Mode()&os.ModeSocket != 0 {
			os.Remove(address)
		}
		gl.l, gl.made, err = listenUnix(address)
	} else {
		gl.l, err = net.Listen(network, address)
	}
	if err != nil {
		return nil, errf(codes.Unavailable, "PortForward: listening on %s in the guest: %v", addr, err)
	}
	go gl.run(gl.l)
	if network == "unix" {
		go gl.keep(a.cfg.log)
	}
	a.listeners[addr] = gl
	a.cfg.log.Info("listening for the host", "address", addr)
	return gl, nil
}

// listenUnix listens on a new unix socket at path, which only root in
// the guest may reach (what the host serves there is the host's).
func listenUnix(path string) (net.Listener, os.FileInfo, error) {
	l, err := net.Listen("unix", path)
	if err != nil {
		return nil, nil, err
	}
	fi, err := os.Lstat(path)
	if err == nil {
		err = os.Chmod(path, 0o600)
	}
	if err != nil {
		l.Close()
		return nil, nil, err
	}
	return l, fi, nil
}

// listenAddr checks a PortForward listen address.
func (a *agent) listenAddr(addr string) (network, address string, err error) {
	kind, rest, _ := strings.Cut(addr, ":")
	switch kind {
	case "unix":
		dir, name := filepath.Split(rest)
		if filepath.Clean(dir) == filepath.Clean(a.cfg.socketDir) && socketName.MatchString(name) {
			return "unix", filepath.Join(a.cfg.socketDir, name), nil
		}
		// A device plugin's endpoint in kubelet's directory: only a name
		// of macvz's own, so that the leftover socket removed before
		// listening is never kubelet's or another plugin's.
		if filepath.Clean(dir) == filepath.Clean(a.cfg.kubeletPluginDir) && socketName.MatchString(name) &&
			strings.HasPrefix(name, api.KubeletPluginPrefix) && strings.HasSuffix(name, ".sock") {
			return "unix", filepath.Join(a.cfg.kubeletPluginDir, name), nil
		}
		return "", "", errf(codes.InvalidArgument, "PortForward: listen %q: a unix socket must be a plain name in %s, or %s<name>.sock in %s",
			addr, a.cfg.socketDir, api.KubeletPluginPrefix, a.cfg.kubeletPluginDir)
	case "tcp":
		ap, err := netip.ParseAddrPort(rest)
		if err != nil || !ap.Addr().IsLoopback() || ap.Port() == 0 {
			return "", "", errf(codes.InvalidArgument, "PortForward: listen %q: want tcp:<loopback address>:<port>", addr)
		}
		return "tcp", ap.String(), nil
	}
	return "", "", errf(codes.InvalidArgument, "PortForward: listen %q: want unix:<path> or tcp:<address>:<port>", addr)
}

// dialAddr checks a PortForward dial address: one of kubelet's sockets,
// nothing else of the guest's.
func (a *agent) dialAddr(addr string) (string, error) {
	kind, rest, _ := strings.Cut(addr, ":")
	if kind != "unix" || !slices.Contains(a.cfg.kubeletSockets, rest) {
		return "", errf(codes.InvalidArgument, "PortForward: dial %q: want unix: and one of %s", addr, strings.Join(a.cfg.kubeletSockets, ", "))
	}
	return rest, nil
}

func (gl *guestListener) run(l net.Listener) {
	for {
		c, err := l.Accept()
		if err != nil {
			if ne, ok := err.(net.Error); ok && ne.Timeout() {
				continue
			}
			gl.mu.Lock()
			replaced := gl.l != l
			gl.mu.Unlock()
			if !replaced {
				gl.errOnce.Do(func() { close(gl.err) })
			}
			return
		}
		gl.conns <- c
	}
}

// keep makes the unix socket again when its file is deleted: kubelet
// removes every socket in its device-plugin directory when it starts,
// which in the node VM is after the host asked for a plugin's endpoint.
// The streams waiting for a client keep waiting, on the new socket. A
// file of someone else's at the path is left alone.
func (gl *guestListener) keep(log *slog.Logger) {
	t := time.NewTicker(socketCheck)
	defer t.Stop()
	quiet := false
	for {
		select {
		case <-gl.err:
			return
		case <-t.C:
		}
		gl.mu.Lock()
		made := gl.made
		gl.mu.Unlock()
		fi, err := os.Lstat(gl.address)
		if err == nil && sameFile(fi, made) {
			quiet = false
			continue
		}
		if err == nil || !errors.Is(err, fs.ErrNotExist) {
			if !quiet {
				log.Warn("the guest socket was replaced by another file; not listening there until it is gone", "address", gl.address, "err", err)
				quiet = true
			}
			continue
		}
		l, made, err := listenUnix(gl.address)
		if err != nil {
			if !quiet {
				log.Warn("making a deleted guest socket again", "address", gl.address, "err", err)
				quiet = true
			}
			continue
		}
		gl.mu.Lock()
		old := gl.l
		gl.l, gl.made = l, made
		gl.mu.Unlock()
		// Closing a unix listener would unlink the new socket's file.
		if ul, ok := old.(*net.UnixListener); ok {
			ul.SetUnlinkOnClose(false)
		}
		old.Close()
		go gl.run(l)
		quiet = false
		log.Info("the guest socket was deleted; listening on it again", "address", gl.address)
	}
}

// sameFile is whether a and b are one file: os.SameFile, and the same
// modification time, since a socket made again may get the inode just
// freed.
func sameFile(a, b os.FileInfo) bool {
	return os.SameFile(a, b) && a.ModTime().Equal(b.ModTime())
}

// accept returns the next client, or an error when ctx ends first.
func (gl *guestListener) accept(ctx context.Context) (net.Conn, error) {
	select {
	case c := <-gl.conns:
		return c, nil
	case <-gl.err:
		return nil, errf(codes.Unavailable, "PortForward: the guest socket %s no longer accepts", gl.address)
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

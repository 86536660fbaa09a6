package agent

import (
	"context"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"strings"

	"google.golang.org/grpc/codes"
)

// DefaultSocketDir is where PortForward's listen makes unix sockets: the
// node VM's kubelet dials DefaultSocketDir/macvz.sock for CRI.
const DefaultSocketDir = "/run/macvz"

// socketName is what a socket in the socket directory may be called: no
// separator, no dot first, so the path cannot leave the directory.
var socketName = regexp.MustCompile(`^[a-zA-Z0-9_-][a-zA-Z0-9._-]{0,63}$`)

// guestListener is a socket in the guest whose clients PortForward
// streams take, one each. One goroutine accepts; a client waits in conns
// until a stream takes it, so none is lost to a stream that ended while
// waiting.
type guestListener struct {
	l     net.Listener
	conns chan net.Conn
	err   chan struct{} // closed when Accept fails for good
}

// guestListener returns the listener of addr ("unix:<path>" in the
// socket directory or "tcp:<loopback address>:<port>"), made on first
// use.
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
	if network == "unix" {
		if err := os.MkdirAll(a.cfg.socketDir, 0o700); err != nil {
			return nil, errf(codes.Internal, "PortForward: making %s: %v", a.cfg.socketDir, err)
		}
		// A socket file left by an earlier agent (the guest's /run
		// survives nothing, but a test's directory may).
		if fi, err := os.Lstat(address); err == nil && fi.Mode()&os.ModeSocket != 0 {
			os.Remove(address)
		}
	}
	l, err := net.Listen(network, address)
	if err != nil {
		return nil, errf(codes.Unavailable, "PortForward: listening on %s in the guest: %v", addr, err)
	}
	if network == "unix" {
		// Only root in the guest may reach what the host serves there.
		if err := os.Chmod(address, 0o600); err != nil {
			l.Close()
			return nil, errf(codes.Internal, "PortForward: %v", err)
		}
	}
	gl := &guestListener{l: l, conns: make(chan net.Conn), err: make(chan struct{})}
	go gl.run()
	a.listeners[addr] = gl
	a.cfg.log.Info("listening for the host", "address", addr)
	return gl, nil
}

// listenAddr checks a PortForward listen address.
func (a *agent) listenAddr(addr string) (network, address string, err error) {
	kind, rest, _ := strings.Cut(addr, ":")
	switch kind {
	case "unix":
		dir, name := filepath.Split(rest)
		if filepath.Clean(dir) != filepath.Clean(a.cfg.socketDir) || !socketName.MatchString(name) {
			return "", "", errf(codes.InvalidArgument, "PortForward: listen %q: a unix socket must be a plain name in %s", addr, a.cfg.socketDir)
		}
		return "unix", filepath.Join(a.cfg.socketDir, name), nil
	case "tcp":
		ap, err := netip.ParseAddrPort(rest)
		if err != nil || !ap.Addr().IsLoopback() || ap.Port() == 0 {
			return "", "", errf(codes.InvalidArgument, "PortForward: listen %q: want tcp:<loopback address>:<port>", addr)
		}
		return "tcp", ap.String(), nil
	}
	return "", "", errf(codes.InvalidArgument, "PortForward: listen %q: want unix:<path> or tcp:<address>:<port>", addr)
}

func (gl *guestListener) run() {
	defer close(gl.err)
	for {
		c, err := gl.l.Accept()
		if err != nil {
			if ne, ok := err.(net.Error); ok && ne.Timeout() {
				continue
			}
			return
		}
		gl.conns <- c
	}
}

// accept returns the next client, or an error when ctx ends first.
func (gl *guestListener) accept(ctx context.Context) (net.Conn, error) {
	select {
	case c := <-gl.conns:
		return c, nil
	case <-gl.err:
		return nil, errf(codes.Unavailable, "PortForward: the guest socket %s no longer accepts", gl.l.Addr())
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

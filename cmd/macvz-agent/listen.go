package main

import (
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	api "github.com/macvz/macvz/runtime/agentapi"
)

// listen opens the agent's listener for spec:
//
//	serial:NAME  the virtio-serial port named NAME (QEMU), with the link
//	             framing of runtime/agentapi
//	vsock:PORT   AF_VSOCK on PORT, any CID (vz)
//	unix:PATH    a unix socket (tests, debugging)
//
// serial opens a virtio-serial port by name ((*agent.Agent).SerialPort).
func listen(spec string, serial func(name string) func() (io.ReadWriteCloser, error)) (net.Listener, error) {
	kind, arg, ok := strings.Cut(spec, ":")
	if !ok || arg == "" {
		return nil, fmt.Errorf("--listen %q: want serial:NAME, vsock:PORT or unix:PATH", spec)
	}
	switch kind {
	case "serial":
		return api.NewLinkListener("serial:"+arg, serial(arg), 20*time.Millisecond), nil
	case "unix":
		os.Remove(arg)
		return net.Listen("unix", arg)
	case "vsock":
		port, err := strconv.ParseUint(arg, 10, 32)
		if err != nil {
			return nil, fmt.Errorf("--listen %q: bad vsock port: %v", spec, err)
		}
		return listenVsock(uint32(port))
	}
	return nil, fmt.Errorf("--listen %q: unknown kind %q", spec, kind)
}

type vsockAddr struct{ cid, port uint32 }

func (a vsockAddr) Network() string { return "vsock" }
func (a vsockAddr) String() string  { return fmt.Sprintf("vsock:%d:%d", a.cid, a.port) }

type vsockListener struct {
	f    *os.File
	addr vsockAddr
}

func listenVsock(port uint32) (net.Listener, error) {
	fd, err := unix.Socket(unix.AF_VSOCK, unix.SOCK_STREAM, 0)
	if err != nil {
		return nil, fmt.Errorf("vsock socket: %w", err)
	}
	unix.CloseOnExec(fd)
	if err := unix.Bind(fd, &unix.SockaddrVM{CID: unix.VMADDR_CID_ANY, Port: port}); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("vsock bind port %d: %w", port, err)
	}
	if err := unix.Listen(fd, 16); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("vsock listen: %w", err)
	}
	if err := unix.SetNonblock(fd, true); err != nil {
		unix.Close(fd)
		return nil, err
	}
	return &vsockListener{f: os.NewFile(uintptr(fd), "vsock"), addr: vsockAddr{unix.VMADDR_CID_ANY, port}}, nil
}

func (l *vsockListener) Accept() (net.Conn, error) {
	rc, err := l.f.SyscallConn()
	if err != nil {
		return nil, err
	}
	var (
		nfd  int
		sa   unix.Sockaddr
		aerr error
	)
	err = rc.Read(func(fd uintptr) bool {
		nfd, sa, aerr = unix.Accept(int(fd))
		return aerr != syscall.EAGAIN
	})
	if err != nil {
		return nil, err
	}
	if aerr != nil {
		return nil, aerr
	}
	unix.CloseOnExec(nfd)
	if err := unix.SetNonblock(nfd, true); err != nil {
		unix.Close(nfd)
		return nil, err
	}
	c := &fileConn{File: os.NewFile(uintptr(nfd), "vsock-conn"), local: l.addr}
	if vm, ok := sa.(*unix.SockaddrVM); ok {
		c.remote = vsockAddr{vm.CID, vm.Port}
	}
	return c, nil
}

func (l *vsockListener) Close() error   { return l.f.Close() }
func (l *vsockListener) Addr() net.Addr { return l.addr }

// fileConn is a connected socket the net package does not know.
type fileConn struct {
	*os.File
	local, remote net.Addr
}

var _ io.ReadWriteCloser = (*fileConn)(nil)

func (c *fileConn) LocalAddr() net.Addr  { return c.local }
func (c *fileConn) RemoteAddr() net.Addr { return c.remote }

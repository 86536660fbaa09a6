//go:build unix

package socketvmnet

import (
	"context"
	"fmt"
	"net"
	"os"
	"syscall"
)

// Dial connects to socket_vmnet's stream socket at path and returns the
// VM's end of a datagram socketpair (for the framework's file-handle
// attachment; the caller closes it when the VM is gone) and the Forwarder
// that relays the other end's frames to the stream (closed with the VM
// too). Both ends of the pair get SendBuffer and ReceiveBuffer.
func Dial(ctx context.Context, path string) (vmEnd *os.File, _ *Forwarder, err error) {
	var d net.Dialer
	stream, err := d.DialContext(ctx, "unix", path)
	if err != nil {
		return nil, nil, fmt.Errorf("connecting to socket_vmnet at %s (is it running? see the README's socket_vmnet section): %w", path, err)
	}
	vmEnd, ours, err := socketpair()
	if err != nil {
		stream.Close()
		return nil, nil, err
	}
	conn, err := net.FileConn(ours) // a dup, made non-blocking
	ours.Close()
	if err != nil {
		stream.Close()
		vmEnd.Close()
		return nil, nil, fmt.Errorf("socket_vmnet: the forwarder's end of the socketpair: %w", err)
	}
	return vmEnd, Forward(conn, stream), nil
}

// socketpair makes a unix datagram socketpair, close-on-exec (the shim
// may start processes), with the buffer sizes on both ends.
func socketpair() (vmEnd, ours *os.File, err error) {
	syscall.ForkLock.RLock()
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_DGRAM, 0)
	if err == nil {
		syscall.CloseOnExec(fds[0])
		syscall.CloseOnExec(fds[1])
	}
	syscall.ForkLock.RUnlock()
	if err != nil {
		return nil, nil, fmt.Errorf("socket_vmnet: socketpair: %w", err)
	}
	for _, fd := range fds {
		for _, o := range []struct {
			name      string
			opt, size int
		}{{"SO_SNDBUF", syscall.SO_SNDBUF, SendBuffer}, {"SO_RCVBUF", syscall.SO_RCVBUF, ReceiveBuffer}} {
			if err := syscall.SetsockoptInt(fd, syscall.SOL_SOCKET, o.opt, o.size); err != nil {
				syscall.Close(fds[0])
				syscall.Close(fds[1])
				return nil, nil, fmt.Errorf("socket_vmnet: setting %s to %d: %w", o.name, o.size, err)
			}
		}
	}
	return os.NewFile(uintptr(fds[0]), "socket_vmnet-vm"), os.NewFile(uintptr(fds[1]), "socket_vmnet-forwarder"), nil
}

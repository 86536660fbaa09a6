package agentapi

import (
	"net"
	"syscall"

	"golang.org/x/sys/unix"
)

// unsentBytes is how much of what was written to c its peer has not read
// yet (SIOCOUTQ: a Unix socket's bytes still queued for the other end);
// ok is false when c has no socket to ask.
func unsentBytes(c net.Conn) (n int, ok bool) {
	sc, isSock := c.(syscall.Conn)
	if !isSock {
		return 0, false
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return 0, false
	}
	var ioErr error
	if err := rc.Control(func(fd uintptr) { n, ioErr = unix.IoctlGetInt(int(fd), unix.SIOCOUTQ) }); err != nil || ioErr != nil {
		return 0, false
	}
	return n, true
}

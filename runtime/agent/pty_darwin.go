package agent

import (
	"bytes"
	"fmt"
	"os"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

func ioctl(fd int, req uint, arg uintptr) error {
	_, _, e := syscall.Syscall(syscall.SYS_IOCTL, uintptr(fd), uintptr(req), arg)
	if e != 0 {
		return e
	}
	return nil
}

// openPty returns a new terminal's master (non-blocking) and slave
// (grantpt/unlockpt/ptsname done with their ioctls).
func openPty() (master, slave *os.File, err error) {
	fd, err := unix.Open("/dev/ptmx", unix.O_RDWR|unix.O_NOCTTY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, nil, fmt.Errorf("opening /dev/ptmx: %w", err)
	}
	fail := func(what string, err error) (*os.File, *os.File, error) {
		unix.Close(fd)
		return nil, nil, fmt.Errorf("%s: %w", what, err)
	}
	if err := ioctl(fd, unix.TIOCPTYGRANT, 0); err != nil {
		return fail("granting the pty", err)
	}
	if err := ioctl(fd, unix.TIOCPTYUNLK, 0); err != nil {
		return fail("unlocking the pty", err)
	}
	var buf [128]byte
	if err := ioctl(fd, unix.TIOCPTYGNAME, uintptr(unsafe.Pointer(&buf[0]))); err != nil {
		return fail("pty name", err)
	}
	name := string(buf[:bytes.IndexByte(buf[:], 0)])
	sfd, err := unix.Open(name, unix.O_RDWR|unix.O_NOCTTY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fail("opening "+name, err)
	}
	if err := unix.SetNonblock(fd, true); err != nil {
		unix.Close(sfd)
		return fail("non-blocking pty", err)
	}
	return os.NewFile(uintptr(fd), "/dev/ptmx"), os.NewFile(uintptr(sfd), name), nil
}

func setWinsize(f *os.File, rows, cols uint32) error {
	ws := &unix.Winsize{Row: uint16(rows), Col: uint16(cols)}
	var err error
	rc, cerr := f.SyscallConn()
	if cerr != nil {
		return cerr
	}
	if cerr := rc.Control(func(fd uintptr) { err = unix.IoctlSetWinsize(int(fd), unix.TIOCSWINSZ, ws) }); cerr != nil {
		return cerr
	}
	return err
}

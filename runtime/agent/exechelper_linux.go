package agent

import (
	"fmt"
	"io"
	"os"
	"strconv"

	"golang.org/x/sys/unix"
)

// execHelperFD is the lowest descriptor the loaded helper may have: above
// the ones a child gets (stdio, ExtraFiles from 3), which os/exec puts in
// place before the exec that opens /proc/self/fd/N.
const execHelperFD = 100

// loadExecHelper copies the helper program at path into a sealed memfd
// and returns the path that executes it, /proc/self/fd/N. The guest's
// root is the initramfs, which a container shares and its root user
// could rewrite: the copy, made before any container runs, cannot be
// written, shrunk or grown. The descriptor is close-on-exec: execve
// opens it before closing such descriptors, and no process keeps it.
func loadExecHelper(path string) (string, error) {
	src, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer src.Close()
	fd, err := unix.MemfdCreate("macvz-exec", unix.MFD_CLOEXEC|unix.MFD_ALLOW_SEALING)
	if err != nil {
		return "", fmt.Errorf("memfd: %w", err)
	}
	mem := os.NewFile(uintptr(fd), "macvz-exec")
	defer mem.Close()
	if _, err := io.Copy(mem, src); err != nil {
		return "", fmt.Errorf("copying %s: %w", path, err)
	}
	if err := mem.Chmod(0o555); err != nil {
		return "", err
	}
	seals := unix.F_SEAL_SEAL | unix.F_SEAL_SHRINK | unix.F_SEAL_GROW | unix.F_SEAL_WRITE
	if _, err := unix.FcntlInt(mem.Fd(), unix.F_ADD_SEALS, seals); err != nil {
		return "", fmt.Errorf("sealing the copy of %s: %w", path, err)
	}
	high, err := unix.FcntlInt(mem.Fd(), unix.F_DUPFD_CLOEXEC, execHelperFD)
	if err != nil {
		return "", err
	}
	return "/proc/self/fd/" + strconv.Itoa(high), nil
}

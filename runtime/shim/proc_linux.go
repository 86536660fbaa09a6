package shim

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/containerd/ttrpc"
)

func init() { maxSunPath = 107 }

// procFDPaths: /proc/self/fd/N/name reaches a file in directory fd N.
const procFDPaths = true

// serverHandshaker refuses connections from other users (besides the
// socket's 0600 mode).
func serverOptions() []ttrpc.ServerOpt {
	return []ttrpc.ServerOpt{ttrpc.WithServerHandshaker(ttrpc.UnixSocketRequireSameUser())}
}

// procArgs is the command line of process pid.
func procArgs(pid int) ([]string, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil {
		return nil, err
	}
	b = bytes.TrimSuffix(b, []byte{0})
	if len(b) == 0 {
		return nil, fmt.Errorf("process %d has no command line (a zombie or a kernel thread)", pid)
	}
	return strings.Split(string(b), "\x00"), nil
}

// procCwd is the working directory of process pid.
func procCwd(pid int) (string, error) {
	return os.Readlink(fmt.Sprintf("/proc/%d/cwd", pid))
}

// processAlive reports whether pid exists and is not a zombie.
func processAlive(pid int) bool {
	if pid <= 0 {
		return false
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	// pid (comm) S ...: the state follows the last ')'.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 || i+2 >= len(b) {
		return syscall.Kill(pid, 0) == nil
	}
	st := b[i+2]
	return st != 'Z' && st != 'X'
}

// sameDir reports whether a and b name the same directory.
func sameDir(a, b string) bool {
	if filepath.Clean(a) == filepath.Clean(b) {
		return true
	}
	sa, err1 := os.Stat(a)
	sb, err2 := os.Stat(b)
	return err1 == nil && err2 == nil && os.SameFile(sa, sb)
}

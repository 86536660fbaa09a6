package shim

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"syscall"

	"github.com/containerd/ttrpc"
	"golang.org/x/sys/unix"
)

// procFDPaths: darwin has no /proc.
const procFDPaths = false

func serverOptions() []ttrpc.ServerOpt { return nil }

// procArgs is the command line of process pid, from sysctl
// kern.procargs2: argc (int32), the executable path, NUL padding, then
// argc NUL-terminated arguments (then the environment).
func procArgs(pid int) ([]string, error) {
	b, err := unix.SysctlRaw("kern.procargs2", pid)
	if err != nil {
		return nil, fmt.Errorf("process %d: %w", pid, err)
	}
	if len(b) < 4 {
		return nil, fmt.Errorf("process %d: short kern.procargs2", pid)
	}
	argc := int(binary.LittleEndian.Uint32(b))
	b = b[4:]
	i := bytes.IndexByte(b, 0) // end of the executable path
	if i < 0 {
		return nil, fmt.Errorf("process %d: bad kern.procargs2", pid)
	}
	b = b[i:]
	for len(b) > 0 && b[0] == 0 {
		b = b[1:]
	}
	args := make([]string, 0, argc)
	for len(args) < argc && len(b) > 0 {
		j := bytes.IndexByte(b, 0)
		if j < 0 {
			j = len(b)
		}
		args = append(args, string(b[:j]))
		b = b[min(j+1, len(b)):]
	}
	return args, nil
}

// procCwd is not available without libproc; callers fall back to the
// command line.
func procCwd(pid int) (string, error) {
	return "", fmt.Errorf("process cwd: %w", syscall.ENOTSUP)
}

// processAlive reports whether pid exists and is not a zombie.
func processAlive(pid int) bool {
	if pid <= 0 {
		return false
	}
	kp, err := unix.SysctlKinfoProc("kern.proc.pid", pid)
	if err != nil || kp.Proc.P_pid != int32(pid) {
		return false
	}
	return kp.Proc.P_stat != 5 // SZOMB
}

func sameDir(a, b string) bool {
	if filepath.Clean(a) == filepath.Clean(b) {
		return true
	}
	sa, err1 := os.Stat(a)
	sb, err2 := os.Stat(b)
	return err1 == nil && err2 == nil && os.SameFile(sa, sb)
}

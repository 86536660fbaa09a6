package agent

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// cgroupRoot is where the agent's init mounts the unified hierarchy;
// containers with a memory limit get a cgroup under cgroupParent.
const (
	cgroupRoot   = "/sys/fs/cgroup"
	cgroupParent = "macvz"
)

// errNoMemoryCgroup: the guest cannot limit one container's memory (a
// kernel without cgroup2's memory controller, or an agent that is not
// init in a guest without the hierarchy mounted). The container runs
// bounded by the VM's memory, as before per-container limits.
var errNoMemoryCgroup = errors.New("this guest has no memory cgroups")

// containerCgroup makes (or empties and reuses) the cgroup of a
// container's main process, limited to limit bytes of memory without
// swap, and returns its directory. The memory controller is enabled on
// the way down, as each level's subtree_control must name it.
func containerCgroup(container string, limit int64) (string, error) {
	if !validCgroupName(container) {
		return "", fmt.Errorf("container id %q cannot name a cgroup", container)
	}
	var st unix.Statfs_t
	if err := unix.Statfs(cgroupRoot, &st); err != nil || st.Type != unix.CGROUP2_SUPER_MAGIC {
		return "", fmt.Errorf("%w: no cgroup2 hierarchy at %s", errNoMemoryCgroup, cgroupRoot)
	}
	if b, err := os.ReadFile(filepath.Join(cgroupRoot, "cgroup.controllers")); err != nil || !strings.Contains(" "+strings.TrimSpace(string(b))+" ", " memory ") {
		return "", fmt.Errorf("%w: the guest kernel's cgroup2 has no memory controller", errNoMemoryCgroup)
	}
	parent := filepath.Join(cgroupRoot, cgroupParent)
	if err := enableMemory(cgroupRoot); err != nil {
		return "", err
	}
	if err := os.Mkdir(parent, 0o755); err != nil && !errors.Is(err, os.ErrExist) {
		return "", err
	}
	if err := enableMemory(parent); err != nil {
		return "", err
	}
	dir := filepath.Join(parent, container)
	if err := os.Mkdir(dir, 0o755); err != nil {
		if !errors.Is(err, os.ErrExist) {
			return "", err
		}
		// A restarted container: its old cgroup must go, or its OOM
		// count would be reported again.
		if err := removeCgroup(dir); err != nil {
			return "", err
		}
		if err := os.Mkdir(dir, 0o755); err != nil {
			return "", err
		}
	}
	if err := os.WriteFile(filepath.Join(dir, "memory.max"), []byte(strconv.FormatInt(limit, 10)), 0o644); err != nil {
		removeCgroup(dir)
		return "", fmt.Errorf("setting memory.max of %s: %w", dir, err)
	}
	// No swap beyond the limit (Kubernetes' default); a kernel without
	// swap accounting has no file to write.
	if err := os.WriteFile(filepath.Join(dir, "memory.swap.max"), []byte("0"), 0o644); err != nil && !errors.Is(err, os.ErrNotExist) {
		removeCgroup(dir)
		return "", fmt.Errorf("setting memory.swap.max of %s: %w", dir, err)
	}
	return dir, nil
}

func validCgroupName(s string) bool {
	return s != "" && s != "." && s != ".." && !strings.ContainsAny(s, "/\x00") && len(s) <= 255
}

func enableMemory(dir string) error {
	b, err := os.ReadFile(filepath.Join(dir, "cgroup.subtree_control"))
	if err == nil && strings.Contains(" "+strings.TrimSpace(string(b))+" ", " memory ") {
		return nil
	}
	if err := os.WriteFile(filepath.Join(dir, "cgroup.subtree_control"), []byte("+memory"), 0o644); err != nil {
		return fmt.Errorf("enabling the memory controller in %s: %w", dir, err)
	}
	return nil
}

// removeCgroup kills what is left in a cgroup and removes it.
func removeCgroup(dir string) error {
	os.WriteFile(filepath.Join(dir, "cgroup.kill"), []byte("1"), 0o644)
	var err error
	for range 50 {
		if err = unix.Rmdir(dir); err == nil || errors.Is(err, unix.ENOENT) {
			return nil
		}
		if !errors.Is(err, unix.EBUSY) {
			break
		}
		unix.Nanosleep(&unix.Timespec{Nsec: 20_000_000}, nil)
	}
	return fmt.Errorf("removing cgroup %s: %w", dir, err)
}

// oomKills is the oom_kill count of a cgroup's memory.events.
func oomKills(dir string) uint64 {
	f, err := os.Open(filepath.Join(dir, "memory.events"))
	if err != nil {
		return 0
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	for s.Scan() {
		if k, v, ok := strings.Cut(s.Text(), " "); ok && k == "oom_kill" {
			n, _ := strconv.ParseUint(strings.TrimSpace(v), 10, 64)
			return n
		}
	}
	return 0
}

// forkSpec is what the agent itself does when it forks a process: a new
// PID namespace (the child is its pid 1), the child's cgroup (clone3
// places it there before it runs), or another process's PID namespace to
// fork into (setns on this thread's pid_for_children).
type forkSpec struct {
	newPidNS  bool
	cgroup    string
	joinPidNS int
}

// startIsolated runs start (which forks cmd) with spec applied.
func startIsolated(cmd *exec.Cmd, spec forkSpec, start func() error) error {
	if spec.newPidNS {
		cmd.SysProcAttr.Cloneflags |= unix.CLONE_NEWPID
	}
	if spec.cgroup != "" {
		fd, err := unix.Open(spec.cgroup, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
		if err != nil {
			return fmt.Errorf("the container's cgroup: %w", err)
		}
		defer unix.Close(fd)
		cmd.SysProcAttr.UseCgroupFD, cmd.SysProcAttr.CgroupFD = true, fd
	}
	if spec.joinPidNS <= 0 {
		return start()
	}
	target, err := os.Open("/proc/" + strconv.Itoa(spec.joinPidNS) + "/ns/pid")
	if err != nil {
		return fmt.Errorf("the container's PID namespace: %w", err)
	}
	defer target.Close()
	own, err := os.Open("/proc/self/ns/pid")
	if err != nil {
		return err
	}
	defer own.Close()
	// pid_for_children is per thread: set it on this locked thread only,
	// fork, and set it back. A thread that could not be set back is not
	// unlocked, so the runtime ends it with this goroutine.
	runtime.LockOSThread()
	if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWPID); err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("entering the container's PID namespace: %w", err)
	}
	err = start()
	if unix.Setns(int(own.Fd()), unix.CLONE_NEWPID) == nil {
		runtime.UnlockOSThread()
	}
	return err
}

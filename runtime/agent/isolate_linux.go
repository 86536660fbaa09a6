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

// errNoCgroups: the guest OS has no cgroups at all (macOS).
var errNoCgroups = errors.New("the guest OS has no cgroups")

// cgroupLimits are a container cgroup's limits: memory.max (0: none)
// and cpu.max's quota and period in µs (quota 0: none; period 0: the
// kernel's 100 ms).
type cgroupLimits struct{ memory, cpuQuota, cpuPeriod int64 }

// containerCgroup makes (or empties and reuses) the cgroup of a
// container's main process with its limits (memory without swap, a CFS
// quota) and returns its directory. The controllers are enabled on the
// way down, as each level's subtree_control must name them; the cpu
// controller where the kernel has it (its counters are what the cAdvisor
// CFS metrics read), the memory controller always.
func containerCgroup(container string, lim cgroupLimits) (string, error) {
	if !validCgroupName(container) {
		return "", fmt.Errorf("container id %q cannot name a cgroup", container)
	}
	parent, err := podCgroup(lim.cpuQuota > 0)
	if err != nil {
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
	if err := setCgroupLimits(dir, lim); err != nil {
		removeCgroup(dir)
		return "", err
	}
	return dir, nil
}

// podCgroup makes the parent of the container cgroups (the pod's, whose
// limits bound them all) with the controllers its children need: memory
// always, cpu where the kernel has it (its counters are what the
// cAdvisor CFS metrics read); needCPU makes a kernel without it an error.
func podCgroup(needCPU bool) (string, error) {
	var st unix.Statfs_t
	if err := unix.Statfs(cgroupRoot, &st); err != nil || st.Type != unix.CGROUP2_SUPER_MAGIC {
		return "", fmt.Errorf("%w: no cgroup2 hierarchy at %s", errNoMemoryCgroup, cgroupRoot)
	}
	b, err := os.ReadFile(filepath.Join(cgroupRoot, "cgroup.controllers"))
	controllers := " " + strings.TrimSpace(string(b)) + " "
	if err != nil || !strings.Contains(controllers, " memory ") {
		return "", fmt.Errorf("%w: the guest kernel's cgroup2 has no memory controller", errNoMemoryCgroup)
	}
	want := []string{"memory"}
	if strings.Contains(controllers, " cpu ") {
		want = append(want, "cpu")
	} else if needCPU {
		return "", fmt.Errorf("%w: the guest kernel's cgroup2 has no cpu controller for the CPU quota", errNoMemoryCgroup)
	}
	parent := filepath.Join(cgroupRoot, cgroupParent)
	if err := enableControllers(cgroupRoot, want); err != nil {
		return "", err
	}
	if err := os.Mkdir(parent, 0o755); err != nil && !errors.Is(err, os.ErrExist) {
		return "", err
	}
	if err := enableControllers(parent, want); err != nil {
		return "", err
	}
	return parent, nil
}

// setCgroupLimits writes lim into a cgroup, a zero as no limit ("max"),
// so that it serves a new cgroup and a live change alike: memory.max
// with no swap beyond it (Kubernetes' default; a kernel without swap
// accounting has no file for it), cpu.max's quota and period (a cgroup
// without the cpu controller has no cpu.max: fine while no quota is
// asked).
func setCgroupLimits(dir string, lim cgroupLimits) error {
	write := func(file, value string) error {
		if err := os.WriteFile(filepath.Join(dir, file), []byte(value), 0o644); err != nil {
			return fmt.Errorf("setting %s of %s to %s: %w", file, dir, value, err)
		}
		return nil
	}
	mem := "max"
	if lim.memory > 0 {
		mem = strconv.FormatInt(lim.memory, 10)
	}
	if err := write("memory.max", mem); err != nil {
		return err
	}
	if lim.memory > 0 {
		if err := write("memory.swap.max", "0"); err != nil && !errors.Is(err, os.ErrNotExist) {
			return err
		}
	}
	period := lim.cpuPeriod
	if period == 0 {
		period = 100_000
	}
	cpu := fmt.Sprintf("max %d", period)
	if lim.cpuQuota > 0 {
		cpu = fmt.Sprintf("%d %d", lim.cpuQuota, period)
	}
	if err := write("cpu.max", cpu); err != nil && (lim.cpuQuota > 0 || !errors.Is(err, os.ErrNotExist)) {
		return err
	}
	return nil
}

func validCgroupName(s string) bool {
	return s != "" && s != "." && s != ".." && !strings.ContainsAny(s, "/\x00") && len(s) <= 255
}

// enableControllers makes dir's children have the controllers names.
func enableControllers(dir string, names []string) error {
	b, err := os.ReadFile(filepath.Join(dir, "cgroup.subtree_control"))
	have := " " + strings.TrimSpace(string(b)) + " "
	for _, n := range names {
		if err == nil && strings.Contains(have, " "+n+" ") {
			continue
		}
		if err := os.WriteFile(filepath.Join(dir, "cgroup.subtree_control"), []byte("+"+n), 0o644); err != nil {
			return fmt.Errorf("enabling the %s controller in %s: %w", n, dir, err)
		}
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

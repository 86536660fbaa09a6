//go:build linux

package shim

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/containerd/errdefs"

	"github.com/macvz/macvz/runtime/vm"
)

// The fake backend runs a "VM" that is just a macvz-agent process on the
// host serving a unix socket (--listen unix:), started like QEMU is: a
// child of the shim with a parent-death signal. Test hooks, as files in
// the sandbox directory (the shim is another process):
//
//	drop-agent   the machine closes every agent connection it handed out
//	             (a lost virtio-serial connection), then deletes the file
//	fail-save    Save fails, leaving the VM running
//	fail-resume  with fail-save: Save fails leaving the VM paused, and
//	             Resume fails
const fakeBackend = "fake"

// The fake VM's "kernel" (Spec.Boot.Kernel) is the macvz-agent binary
// it runs; its command line may hold fakePowerButton: the guest powers
// off at once when Stop presses the power button (grace > 0), as a real
// guest does.
const fakePowerButton = "power-button"

const (
	fakeAgentSocket = "fake-agent.sock"
	fakeAgentPID    = "fake-agent.pid"
	dropAgentFile   = "drop-agent"
	failSaveFile    = "fail-save"
	failResumeFile  = "fail-resume"
)

func init() {
	RegisterBackend(fakeBackend, Backend{
		New:      func() (vm.Driver, error) { return fakeDriver{}, nil },
		PIDFiles: []string{fakeAgentPID},
	})
}

type fakeDriver struct{}

func (fakeDriver) Name() string { return fakeBackend }

func (fakeDriver) Validate(spec *vm.Spec) error {
	if spec.Boot.Kernel == "" {
		return fmt.Errorf("%w: boot.kernel (the agent binary) is empty", errdefs.ErrInvalidArgument)
	}
	return nil
}

func (fakeDriver) Restorable(spec *vm.Spec) error { return nil }

func (fakeDriver) Create(ctx context.Context, spec *vm.Spec) (vm.Machine, error) {
	return &fakeMachine{spec: spec, state: vm.StateCreated, done: make(chan struct{}), conns: map[net.Conn]struct{}{}}, nil
}

type fakeMachine struct {
	spec *vm.Spec

	mu     sync.Mutex
	state  vm.State
	exit   vm.Exit
	proc   *os.Process
	killed bool
	// poweredOff: Stop pressed the power button (fakePowerButton)
	poweredOff bool
	conns      map[net.Conn]struct{}
	done       chan struct{}
}

func (m *fakeMachine) path(name string) string { return filepath.Join(m.spec.Dir, name) }

// agentSocket is where the agent listens: in Dir unless that path is too
// long for a socket.
func (m *fakeMachine) agentSocket() string {
	p := m.path(fakeAgentSocket)
	if len(p) > 100 {
		p = filepath.Join(os.TempDir(), fmt.Sprintf("fake-agent-%x.sock", sha256.Sum224([]byte(p))))
	}
	return p
}

func (m *fakeMachine) Start(ctx context.Context) error {
	m.mu.Lock()
	if m.state != vm.StateCreated {
		m.mu.Unlock()
		return fmt.Errorf("%w: machine is %s", errdefs.ErrFailedPrecondition, m.state)
	}
	m.mu.Unlock()
	console := m.spec.ConsoleLog
	if console == "" {
		console = m.path("console.log")
	}
	logf, err := os.OpenFile(console, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	started := make(chan error, 1)
	go func() {
		// Pdeathsig follows the thread that forked: keep it.
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		defer logf.Close()
		cmd := exec.Command(m.spec.Boot.Kernel, "--listen", "unix:"+m.agentSocket(),
			"--etc-dir", m.path("etc"), "--log-level", "debug")
		cmd.Dir = m.spec.Dir
		cmd.Stdout, cmd.Stderr = logf, logf
		cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, Setpgid: true}
		if err := cmd.Start(); err != nil {
			m.finish(vm.Exit{At: time.Now(), Reason: "agent did not start: " + err.Error()})
			started <- err
			return
		}
		os.WriteFile(m.path(fakeAgentPID), []byte(strconv.Itoa(cmd.Process.Pid)+"\n"), 0o600)
		m.mu.Lock()
		m.proc = cmd.Process
		m.state = vm.StateRunning
		m.mu.Unlock()
		started <- nil
		err := cmd.Wait()
		os.Remove(m.path(fakeAgentPID))
		os.Remove(m.agentSocket())
		m.mu.Lock()
		killed, poweredOff := m.killed, m.poweredOff
		m.mu.Unlock()
		reason, clean := fmt.Sprintf("agent exited: %v", err), false
		if killed {
			reason, clean = "killed", false
		} else if poweredOff {
			reason, clean = "guest powered off", true
		}
		m.finish(vm.Exit{At: time.Now(), Reason: reason, Clean: clean})
	}()
	if err := <-started; err != nil {
		return fmt.Errorf("starting fake VM: %w", err)
	}
	go m.hooks()
	return nil
}

// hooks serves the test hooks while the machine runs.
func (m *fakeMachine) hooks() {
	t := time.NewTicker(20 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-m.done:
			return
		case <-t.C:
		}
		if err := os.Remove(m.path(dropAgentFile)); err == nil {
			m.mu.Lock()
			var cs []net.Conn
			for c := range m.conns {
				cs = append(cs, c)
			}
			m.mu.Unlock()
			for _, c := range cs {
				c.Close()
			}
		}
	}
}

func (m *fakeMachine) finish(e vm.Exit) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.state == vm.StateStopped {
		return
	}
	m.state = vm.StateStopped
	m.exit = e
	close(m.done)
}

func (m *fakeMachine) Stop(ctx context.Context, grace time.Duration) error {
	m.mu.Lock()
	switch m.state {
	case vm.StateStopped:
		m.mu.Unlock()
		return nil
	case vm.StateCreated:
		m.mu.Unlock()
		m.finish(vm.Exit{At: time.Now(), Reason: "stopped before it started", Clean: true})
		return nil
	}
	p := m.proc
	m.mu.Unlock()
	if grace > 0 && strings.Contains(m.spec.Boot.Cmdline, fakePowerButton) {
		m.mu.Lock()
		m.poweredOff = true
		m.mu.Unlock()
		p.Signal(syscall.SIGTERM)
	}
	if grace > 0 {
		t := time.NewTimer(grace)
		select {
		case <-m.done:
			t.Stop()
			return nil
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
		}
	}
	m.mu.Lock()
	m.killed = true
	m.mu.Unlock()
	p.Kill()
	select {
	case <-m.done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (m *fakeMachine) Done() <-chan struct{} { return m.done }

func (m *fakeMachine) Exit() vm.Exit {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.exit
}

func (m *fakeMachine) State() vm.State {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.state
}

func (m *fakeMachine) Stats(ctx context.Context) (vm.Stats, error) {
	m.mu.Lock()
	p := m.proc
	m.mu.Unlock()
	if p == nil {
		return vm.Stats{}, errors.New("not running")
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/statm", p.Pid))
	if err != nil {
		return vm.Stats{}, err
	}
	f := strings.Fields(string(b))
	rss, _ := strconv.ParseUint(f[1], 10, 64)
	return vm.Stats{CPUNanos: 1, MemoryBytes: rss * uint64(os.Getpagesize())}, nil
}

type trackedConn struct {
	net.Conn
	m    *fakeMachine
	once sync.Once
}

func (c *trackedConn) Close() error {
	c.once.Do(func() {
		c.m.mu.Lock()
		delete(c.m.conns, c)
		c.m.mu.Unlock()
	})
	return c.Conn.Close()
}

func (m *fakeMachine) DialAgent(ctx context.Context) (net.Conn, error) {
	if st := m.State(); st != vm.StateRunning {
		return nil, fmt.Errorf("%w: machine is %s", errdefs.ErrFailedPrecondition, st)
	}
	var d net.Dialer
	c, err := d.DialContext(ctx, "unix", m.agentSocket())
	if err != nil {
		return nil, err
	}
	tc := &trackedConn{Conn: c, m: m}
	m.mu.Lock()
	m.conns[tc] = struct{}{}
	m.mu.Unlock()
	return tc, nil
}

func (m *fakeMachine) Save(ctx context.Context, path string) error {
	if _, err := os.Stat(m.path(failSaveFile)); err == nil {
		return errors.New("fake VM: saving the state failed")
	}
	return os.WriteFile(path, []byte("fake VM state of "+m.spec.ID+"\n"), 0o600)
}

// SaveRAMFile writes the state and a RAM file beside it, as QEMU's
// machine does for a VM with its RAM in a memfd.
func (m *fakeMachine) SaveRAMFile(ctx context.Context, path string) error {
	if err := m.Save(ctx, path); err != nil {
		return err
	}
	return os.WriteFile(path+vm.RAMFileSuffix, []byte("fake VM RAM of "+m.spec.ID+"\n"), 0o600)
}

func (m *fakeMachine) Resume(ctx context.Context) error {
	if _, err := os.Stat(m.path(failResumeFile)); err == nil {
		return errors.New("fake VM: resuming failed")
	}
	return nil
}

package agent

import (
	"log/slog"
	"os"
	"os/exec"
	"os/signal"
	"sync"
	"syscall"
	"time"
)

// waitResult is how a process ended.
type waitResult struct {
	status syscall.WaitStatus
	err    error
	at     time.Time
}

// reaper starts processes and reports their exits.
type reaper interface {
	// start runs cmd.Start and returns a channel that gets its exit.
	start(cmd *exec.Cmd) (<-chan waitResult, error)
}

// pidReaper waits for each child on its own (the agent is not init, other
// code in the process may have children).
type pidReaper struct{}

func (pidReaper) start(cmd *exec.Cmd) (<-chan waitResult, error) {
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	ch := make(chan waitResult, 1)
	go func() {
		ps, err := cmd.Process.Wait()
		r := waitResult{err: err, at: time.Now()}
		if ps != nil {
			r.status, _ = ps.Sys().(syscall.WaitStatus)
		}
		ch <- r
	}()
	return ch, nil
}

// centralReaper reaps every child with wait4(-1) on SIGCHLD and hands the
// status to whoever started that pid; orphans reparented to init are
// reaped and forgotten. Starting holds the lock so that a child that exits
// at once is not reaped before its waiter is registered.
type centralReaper struct {
	mu      sync.Mutex
	waiters map[int]chan waitResult
	log     *slog.Logger
}

func newCentralReaper(log *slog.Logger) *centralReaper {
	r := &centralReaper{waiters: map[int]chan waitResult{}, log: log}
	sig := make(chan os.Signal, 16)
	signal.Notify(sig, syscall.SIGCHLD)
	go func() {
		r.reap()
		for range sig {
			r.reap()
		}
	}()
	return r
}

func (r *centralReaper) reap() {
	r.mu.Lock()
	defer r.mu.Unlock()
	for {
		var ws syscall.WaitStatus
		pid, err := syscall.Wait4(-1, &ws, syscall.WNOHANG, nil)
		if err == syscall.EINTR {
			continue
		}
		if err != nil || pid <= 0 {
			return
		}
		if ch, ok := r.waiters[pid]; ok {
			delete(r.waiters, pid)
			ch <- waitResult{status: ws, at: time.Now()}
		}
	}
}

func (r *centralReaper) start(cmd *exec.Cmd) (<-chan waitResult, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	ch := make(chan waitResult, 1)
	r.waiters[cmd.Process.Pid] = ch
	return ch, nil
}

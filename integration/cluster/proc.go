//go:build linux

package cluster

import (
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Proc is one process of the cluster (etcd, a Kubernetes component,
// macvz, kubelet) with its output in a log file.
type Proc struct {
	Name string
	// Log is the file its stdout and stderr go to.
	Log  string
	cmd  *exec.Cmd
	done chan struct{}
}

// startProc runs argv with its output in logPath. The process is killed
// if the test binary dies (Pdeathsig), so a crashed test leaves nothing
// running.
func startProc(name, logPath string, argv ...string) (*Proc, error) {
	f, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	fmt.Fprintf(f, "---- %s: %s\n", time.Now().Format(time.RFC3339Nano), strings.Join(argv, " "))
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stdout, cmd.Stderr = f, f
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		f.Close()
		return nil, fmt.Errorf("starting %s: %w", name, err)
	}
	p := &Proc{Name: name, Log: logPath, cmd: cmd, done: make(chan struct{})}
	go func() {
		cmd.Wait()
		f.Close()
		close(p.done)
	}()
	return p, nil
}

// Pid is the process's ID.
func (p *Proc) Pid() int { return p.cmd.Process.Pid }

// Exited reports whether the process has ended, and how.
func (p *Proc) Exited() (bool, string) {
	select {
	case <-p.done:
		return true, p.cmd.ProcessState.String()
	default:
		return false, ""
	}
}

// Stop sends SIGTERM, waits up to grace, then SIGKILLs.
func (p *Proc) Stop(grace time.Duration) {
	if p == nil {
		return
	}
	if ok, _ := p.Exited(); ok {
		return
	}
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(grace):
		p.cmd.Process.Kill()
		<-p.done
	}
}

// end is Stop, or SIGKILL and the wait for the process's end when kill.
func (p *Proc) end(kill bool, grace time.Duration) {
	if !kill {
		p.Stop(grace)
		return
	}
	if ok, _ := p.Exited(); !ok {
		p.cmd.Process.Kill()
	}
	<-p.done
}

// Tail is the last n lines of the process's log.
func (p *Proc) Tail(n int) string {
	if p == nil {
		return ""
	}
	b, err := os.ReadFile(p.Log)
	if err != nil {
		return err.Error()
	}
	return lastLines(string(b), n)
}

// Contains reports whether the process's log has s.
func (p *Proc) Contains(s string) bool {
	b, _ := os.ReadFile(p.Log)
	return strings.Contains(string(b), s)
}

// Describe is a failure message's part about the process: whether it
// still runs, and its log's tail.
func (p *Proc) Describe(n int) string {
	if p == nil {
		return ""
	}
	state := "running"
	if ok, how := p.Exited(); ok {
		state = "exited: " + how
	}
	return fmt.Sprintf("---- %s (%s), log %s, last %d lines:\n%s", p.Name, state, p.Log, n, p.Tail(n))
}

func lastLines(s string, n int) string {
	ls := strings.Split(strings.TrimRight(s, "\n"), "\n")
	return strings.Join(ls[max(0, len(ls)-n):], "\n")
}

// keepLog copies a process's log to $MACVZ_CLUSTER_LOGS/<name>.log when
// that is set (for CI artifacts and debugging); the test's directories
// are removed at its end.
func keepLog(p *Proc) {
	dir := os.Getenv("MACVZ_CLUSTER_LOGS")
	if p == nil || dir == "" {
		return
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return
	}
	src, err := os.Open(p.Log)
	if err != nil {
		return
	}
	defer src.Close()
	dst, err := os.Create(filepath.Join(dir, p.Name+".log"))
	if err != nil {
		return
	}
	defer dst.Close()
	io.Copy(dst, src)
}

// processesUnder lists the processes whose command line mentions dir
// (a node's shims and QEMUs name their state directory), as "pid: cmd".
func processesUnder(dir string) []string {
	var out []string
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		if _, err := strconv.Atoi(e.Name()); err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil {
			continue
		}
		cmd := strings.ReplaceAll(string(b), "\x00", " ")
		if strings.Contains(cmd, dir) {
			out = append(out, e.Name()+": "+cmd)
		}
	}
	return out
}

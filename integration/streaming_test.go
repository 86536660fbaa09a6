package integration

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/macvz/macvz/integration/testutil"
)

// tmuxSession runs a command on a terminal (tmux) so crictl -it has a
// real tty to drive.
type tmuxSession struct {
	t    *testing.T
	name string
}

func newTmux(t *testing.T, cols, rows int, argv ...string) *tmuxSession {
	t.Helper()
	testutil.RequireTool(t, "tmux", "tmux")
	s := &tmuxSession{t: t, name: fmt.Sprintf("macvz-%d", time.Now().UnixNano())}
	args := append([]string{"new-session", "-d", "-s", s.name, "-x", strconv.Itoa(cols), "-y", strconv.Itoa(rows)}, argv...)
	if out, err := exec.Command("tmux", args...).CombinedOutput(); err != nil {
		t.Fatalf("tmux: %v: %s", err, out)
	}
	t.Cleanup(func() { exec.Command("tmux", "kill-session", "-t", s.name).Run() })
	return s
}

func (s *tmuxSession) send(keys string) {
	s.t.Helper()
	if out, err := exec.Command("tmux", "send-keys", "-t", s.name, keys, "Enter").CombinedOutput(); err != nil {
		s.t.Fatalf("tmux send-keys: %v: %s", err, out)
	}
}

func (s *tmuxSession) screen() string {
	out, _ := exec.Command("tmux", "capture-pane", "-p", "-t", s.name).Output()
	return string(out)
}

// waitScreen waits until the terminal shows want.
func (s *tmuxSession) waitScreen(want string) {
	s.t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !strings.Contains(s.screen(), want) {
		if time.Now().After(deadline) {
			s.t.Fatalf("the terminal never showed %q:\n%s", want, s.screen())
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// sendUntil sends keys every few seconds until the terminal shows want, for
// up to 30s, and reports whether it did. A resize reaches the guest on its
// own stream, unordered with stdin (kubectl's and crictl's resize queue, the
// apiserver's proxy), so a command typed right after it may still see the
// old size: that is so with any runtime, and a user types it again.
func (s *tmuxSession) sendUntil(keys, want string) bool {
	s.t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		s.send(keys)
		for next := time.Now().Add(3 * time.Second); time.Now().Before(next); time.Sleep(100 * time.Millisecond) {
			if strings.Contains(s.screen(), want) {
				return true
			}
		}
	}
	return false
}

func (s *tmuxSession) resize(cols, rows int) {
	s.t.Helper()
	if out, err := exec.Command("tmux", "resize-window", "-t", s.name, "-x", strconv.Itoa(cols), "-y", strconv.Itoa(rows)).CombinedOutput(); err != nil {
		s.t.Fatalf("tmux resize-window: %v: %s", err, out)
	}
}

// crictlArgs is the full crictl command line for a terminal.
func (d *daemon) crictlArgs(args ...string) []string {
	return append([]string{requireCrictl(d.t), "--config", d.crictlConfig(), "--runtime-endpoint", "unix://" + d.socket,
		"--image-endpoint", "unix://" + d.socket, "--timeout", "4m"}, args...)
}

// guestProcesses is `ps` in the container (busybox: PID USER COMMAND).
func (v *vmTest) guestProcesses(t *testing.T, ctr string) string {
	t.Helper()
	return v.execOut(t, ctr, "ps", "-o", "pid,args")
}

// TestStreaming drives exec -it, exec -i, attach and port-forward with the
// real crictl against a pod VM.
func TestStreaming(t *testing.T) {
	v := newVMTest(t)
	podCfg := v.podConfig(t, "stream", nil)
	pod := v.runPod(t, podCfg)
	web := v.startCtr(t, pod, v.ctrConfig(t, "web", v.httpd, nil), podCfg)

	t.Run("exec -it with resize", func(t *testing.T) {
		term := newTmux(t, 120, 40, v.d.crictlArgs("exec", "-it", web, "/bin/sh")...)
		term.waitScreen("/ #")
		term.send("echo sum=$((6*7))")
		term.waitScreen("sum=42")
		if !term.sendUntil("stty size", "40 120") {
			t.Fatalf("the terminal never showed its size 40 120:\n%s", term.screen())
		}
		term.resize(100, 30)
		if !term.sendUntil("stty size", "30 100") {
			t.Fatalf("the terminal never showed the new size 30 100:\n%s", term.screen())
		}
		term.send("tty")
		term.waitScreen("/dev/pts/")
		term.send("exit")
	})

	t.Run("exec stdin, stdout, stderr and exit code", func(t *testing.T) {
		args := v.d.crictlArgs("exec", "-i", web, "sh", "-c", "cat; echo to-stderr >&2")
		cmd := exec.Command(args[0], args[1:]...)
		cmd.Stdin = strings.NewReader("through stdin\n")
		var stdout, stderr strings.Builder
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		if err := cmd.Run(); err != nil {
			t.Fatalf("crictl exec -i: %v\n%s", err, stderr.String())
		}
		if stdout.String() != "through stdin\n" || !strings.Contains(stderr.String(), "to-stderr") {
			t.Errorf("stdout %q, stderr %q", stdout.String(), stderr.String())
		}
		out, err := v.d.crictl("exec", web, "sh", "-c", "exit 4")
		if err == nil || !strings.Contains(out, "exit code 4") {
			t.Errorf("exec exiting 4: %v\n%s", err, out)
		}
	})

	t.Run("a closed session leaves no process", func(t *testing.T) {
		args := v.d.crictlArgs("exec", web, "sleep", "4321")
		cmd := exec.Command(args[0], args[1:]...)
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		waitFor(t, "the exec to run", 30*time.Second, func() bool { return strings.Contains(v.guestProcesses(t, web), "sleep 4321") })
		cmd.Process.Kill()
		cmd.Wait()
		waitFor(t, "the exec to be killed", 30*time.Second, func() bool { return !strings.Contains(v.guestProcesses(t, web), "sleep 4321") })
	})

	t.Run("attach with a terminal", func(t *testing.T) {
		sh := v.startCtr(t, pod, v.ctrConfig(t, "shell", v.httpd, map[string]any{
			"command": []string{"/bin/sh"}, "stdin": true, "tty": true,
		}), podCfg)
		term := newTmux(t, 120, 40, v.d.crictlArgs("attach", "-i", "-t", sh)...)
		time.Sleep(time.Second) // attach shows output from now on: let it connect
		term.send("echo attached $((2+3))")
		term.waitScreen("attached 5")
		if !term.sendUntil("stty size", "40 120") {
			t.Fatalf("the terminal never showed its size 40 120:\n%s", term.screen())
		}
	})

	t.Run("attach with stdin_once", func(t *testing.T) {
		reader := v.startCtr(t, pod, v.ctrConfig(t, "reader", v.httpd, map[string]any{
			"command": []string{"/bin/sh", "-c", "while read l; do echo got $l; done; echo stdin closed"},
			"stdin":   true, "stdin_once": true,
		}), podCfg)
		args := v.d.crictlArgs("attach", "-i", reader)
		cmd := exec.Command(args[0], args[1:]...)
		cmd.Stdin = strings.NewReader("one\ntwo\n")
		out, err := cmd.CombinedOutput()
		if err != nil || !strings.Contains(string(out), "got one\ngot two\nstdin closed") {
			t.Errorf("attach: %v\n%s", err, out)
		}
		waitFor(t, "the reader to exit after stdin closed", 30*time.Second, func() bool {
			return v.inspect(t, reader).Status.State == "CONTAINER_EXITED"
		})
	})

	t.Run("port-forward, two connections at once", func(t *testing.T) {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		port := l.Addr().(*net.TCPAddr).Port
		l.Close()
		args := v.d.crictlArgs("port-forward", pod, fmt.Sprintf("%d:80", port))
		cmd := exec.Command(args[0], args[1:]...)
		out, _ := cmd.StdoutPipe()
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		defer func() { cmd.Process.Kill(); cmd.Wait() }()
		sc := bufio.NewScanner(out)
		for sc.Scan() && !strings.Contains(sc.Text(), "Forwarding from 127.0.0.1") {
		}
		go io.Copy(io.Discard, out)
		addr := fmt.Sprintf("127.0.0.1:%d", port)
		var conns []net.Conn
		for range 2 {
			c, err := net.DialTimeout("tcp", addr, 10*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			conns = append(conns, c)
		}
		// Both are open before either is used.
		for _, c := range conns {
			fmt.Fprintf(c, "GET / HTTP/1.0\r\n\r\n")
		}
		for i, c := range conns {
			c.SetDeadline(time.Now().Add(30 * time.Second))
			b, err := io.ReadAll(c)
			if err != nil || !strings.Contains(string(b), "hello from the macvz guest") {
				t.Errorf("connection %d: %v\n%s", i, err, b)
			}
		}
	})
	v.d.mustCrictl("rmp", "-f", pod)
}

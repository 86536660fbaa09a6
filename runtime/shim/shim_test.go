//go:build linux

package shim

import (
	"bufio"
	"bytes"
	"context"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/containerd/errdefs"

	"github.com/macvz/macvz/runtime/agentapi"
	"github.com/macvz/macvz/runtime/shimapi"
	"github.com/macvz/macvz/runtime/vm"
)

// The tests run real shims: this test binary, re-executed as
// `<test binary> shim --dir DIR` (TestMain), which is what Spawn runs by
// default (os.Executable). The shims run the fake backend (fake_test.go):
// a macvz-agent built by TestMain, serving a unix socket on the host.

var agentBin string

func TestMain(m *testing.M) {
	if len(os.Args) > 1 {
		switch os.Args[1] {
		case "shim":
			shimMain(os.Args[2:])
			return
		case "spawner":
			spawnerMain(os.Args[2:])
			return
		}
	}
	tmp, err := os.MkdirTemp("", "shim-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	agentBin = filepath.Join(tmp, "macvz-agent")
	out, err := exec.Command("go", "build", "-o", agentBin, "github.com/macvz/macvz/cmd/macvz-agent").CombinedOutput()
	if err != nil {
		fmt.Fprintf(os.Stderr, "building macvz-agent: %v\n%s", err, out)
		os.RemoveAll(tmp)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(tmp)
	os.Exit(code)
}

// shimMain is `macvz shim` in this test binary.
func shimMain(args []string) {
	fs := flag.NewFlagSet("shim", flag.ExitOnError)
	dir := fs.String("dir", "", "")
	level := fs.String("log-level", "", "")
	fs.Parse(args)
	if err := Run(context.Background(), RunOptions{Dir: *dir, LogLevel: *level}); err != nil {
		fmt.Fprintln(os.Stderr, "shim:", err)
		os.Exit(1)
	}
	os.Exit(0)
}

// spawnerMain plays a daemon that spawns and starts a shim, says "ready"
// and waits to be killed: `spawner DIR AGENT`.
func spawnerMain(args []string) {
	dir, agent := args[0], args[1]
	ctx := context.Background()
	c, err := Spawn(ctx, SpawnOptions{Dir: dir, Backend: fakeBackend, Spec: fakeSpec(dir, agent), LogLevel: "debug"})
	if err != nil {
		fmt.Println("error:", err)
		os.Exit(1)
	}
	if _, err := c.Start(ctx, 30*time.Second); err != nil {
		fmt.Println("error:", err)
		os.Exit(1)
	}
	fmt.Println("ready", c.Pid())
	select {}
}

func fakeSpec(dir, agent string) *vm.Spec {
	return &vm.Spec{
		ID:          "sb-" + filepath.Base(filepath.Dir(dir)),
		Dir:         dir,
		CPUs:        1,
		MemoryBytes: 64 << 20,
		Boot:        vm.Boot{Kind: vm.BootLinux, Kernel: agent},
		ConsoleLog:  filepath.Join(dir, "console.log"),
	}
}

func ctxT(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// sandboxDir is a fresh sandbox directory whose shim is cleaned up (and
// its logs shown on failure) at the end of the test.
func sandboxDir(t *testing.T) string {
	dir := filepath.Join(t.TempDir(), "sb")
	t.Cleanup(func() {
		if err := Kill(context.Background(), dir); err != nil {
			t.Errorf("Kill: %v", err)
		}
		b, _ := os.ReadFile(filepath.Join(dir, LogFile))
		if bytes.Contains(b, []byte("WARNING: DATA RACE")) {
			t.Errorf("the shim had a data race")
		}
		if t.Failed() {
			for _, f := range []string{LogFile, "console.log"} {
				b, _ := os.ReadFile(filepath.Join(dir, f))
				t.Logf("--- %s:\n%s", f, b)
			}
		}
	})
	return dir
}

// spawn starts a shim with the fake backend and its VM.
func spawn(t *testing.T) (*Client, string) {
	t.Helper()
	dir := sandboxDir(t)
	ctx := ctxT(t, 60*time.Second)
	c, err := Spawn(ctx, SpawnOptions{Dir: dir, Backend: fakeBackend, Spec: fakeSpec(dir, agentBin), LogLevel: "debug"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	r, err := c.Start(ctx, 30*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if r.Agent.GetOs() != "linux" || r.BootNs <= 0 {
		t.Errorf("Start: %v", r)
	}
	// The boot's Info skips the interfaces (the fake VM's agent runs on
	// this host, which has some: TestForwarding sees them).
	if n := len(r.Agent.GetInterfaces()); n != 0 {
		t.Errorf("Start: the boot's Info listed %d interfaces; it asks for none", n)
	}
	return c, dir
}

func pid(c, e string) *agentapi.ProcessID { return &agentapi.ProcessID{ContainerId: c, ExecId: e} }

func baseEnv() []string {
	return []string{"PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin", "HOME=/"}
}

// create creates (not starts) a process through the shim.
func create(t *testing.T, c *Client, id *agentapi.ProcessID, argv ...string) {
	t.Helper()
	if _, err := c.Agent().CreateProcess(ctxT(t, 10*time.Second), &agentapi.CreateProcessRequest{Id: id, Argv: argv, Env: baseEnv()}); err != nil {
		t.Fatalf("CreateProcess: %v", err)
	}
}

func start(t *testing.T, c *Client, id *agentapi.ProcessID) {
	t.Helper()
	if _, err := c.Agent().StartProcess(ctxT(t, 10*time.Second), &agentapi.StartProcessRequest{Id: id}); err != nil {
		t.Fatalf("StartProcess: %v", err)
	}
}

func watch(t *testing.T, c *Client, id *agentapi.ProcessID, logPath string) {
	t.Helper()
	if _, err := c.Shim().WatchProcess(ctxT(t, 10*time.Second), &shimapi.WatchProcessRequest{ContainerId: id.ContainerId, ExecId: id.ExecId, LogPath: logPath}); err != nil {
		t.Fatalf("WatchProcess: %v", err)
	}
}

func waitExit(t *testing.T, c *Client, id *agentapi.ProcessID) *shimapi.ProcessExit {
	t.Helper()
	r, err := c.Shim().WaitProcess(ctxT(t, 30*time.Second), &shimapi.WaitProcessRequest{ContainerId: id.ContainerId, ExecId: id.ExecId})
	if err != nil {
		t.Fatalf("WaitProcess: %v", err)
	}
	return r.Exit
}

var criLine = regexp.MustCompile(`^(\S+) (stdout|stderr) (F|P) (.*)$`)

type logEntry struct {
	at          time.Time
	stream, tag string
	content     string
}

// readCRILog parses a CRI log file strictly.
func readCRILog(t *testing.T, path string) []logEntry {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if len(b) > 0 && b[len(b)-1] != '\n' {
		t.Errorf("%s does not end with a newline", path)
	}
	var es []logEntry
	for _, l := range strings.Split(strings.TrimSuffix(string(b), "\n"), "\n") {
		if l == "" && len(b) == 0 {
			continue
		}
		m := criLine.FindStringSubmatch(l)
		if m == nil {
			t.Errorf("bad CRI log line %q", l)
			continue
		}
		at, err := time.Parse(time.RFC3339Nano, m[1])
		if err != nil {
			t.Errorf("bad timestamp in %q: %v", l, err)
		}
		es = append(es, logEntry{at, m[2], m[3], m[4]})
	}
	return es
}

// streamText joins one stream's entries as the kubelet does.
func streamText(es []logEntry, stream string) string {
	var b strings.Builder
	for _, e := range es {
		if e.stream != stream {
			continue
		}
		b.WriteString(e.content)
		if e.tag == "F" {
			b.WriteByte('\n')
		}
	}
	return b.String()
}

func TestLifecycle(t *testing.T) {
	c, dir := spawn(t)
	ctx := ctxT(t, 60*time.Second)

	// Detached: its own session.
	if sid := procSID(t, c.Pid()); sid != c.Pid() {
		t.Errorf("shim session id %d, want its pid %d (setsid)", sid, c.Pid())
	}
	for _, f := range []string{SpecFile, ConfigFile, SocketFile, PIDFile, LogFile} {
		if _, err := os.Stat(filepath.Join(dir, f)); err != nil {
			t.Error(err)
		}
	}
	if st, _ := os.Stat(filepath.Join(dir, SocketFile)); st != nil && st.Mode().Perm() != 0o600 {
		t.Errorf("socket mode %v, want 0600", st.Mode().Perm())
	}
	st, err := c.State(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if st.State != shimapi.VMState_VM_RUNNING || !st.AgentConnected || st.Backend != fakeBackend || st.Id != fakeSpec(dir, "").ID || int(st.ShimPid) != c.Pid() {
		t.Errorf("State: %v", st)
	}
	if _, err := c.Start(ctx, time.Second); !errdefs.IsFailedPrecondition(err) {
		t.Errorf("second Start: %v, want FailedPrecondition", err)
	}
	if s, err := c.Shim().Stats(ctx, &shimapi.StatsRequest{}); err != nil || s.MemoryBytes == 0 {
		t.Errorf("Stats: %v %v", s, err)
	}

	// A container: output into a CRI log, exit 3.
	logPath := filepath.Join(t.TempDir(), "ctr.log")
	id := pid("ctr1", "")
	create(t, c, id, "sh", "-c", "echo a; echo b >&2; exit 3")
	watch(t, c, id, logPath)
	watch(t, c, id, logPath) // again: fine
	if _, err := c.Shim().WatchProcess(ctx, &shimapi.WatchProcessRequest{ContainerId: "ctr1", LogPath: logPath + ".other"}); !errdefs.IsAlreadyExists(err) {
		t.Errorf("WatchProcess with another log: %v, want AlreadyExists", err)
	}
	ps, err := c.Shim().ProcessStatus(ctx, &shimapi.ProcessStatusRequest{ContainerId: "ctr1"})
	if err != nil || ps.State != shimapi.ProcessState_PROCESS_RUNNING {
		t.Errorf("ProcessStatus before start: %v %v", ps, err)
	}
	start(t, c, id)
	ex := waitExit(t, c, id)
	if ex.ExitCode != 3 || ex.Signaled || ex.Reason != ReasonError || ex.FinishedUnixNano == 0 {
		t.Errorf("exit: %v", ex)
	}
	es := readCRILog(t, logPath)
	if got := streamText(es, "stdout"); got != "a\n" {
		t.Errorf("stdout in the log: %q", got)
	}
	if got := streamText(es, "stderr"); got != "b\n" {
		t.Errorf("stderr in the log: %q", got)
	}
	if len(es) != 2 {
		t.Errorf("log entries: %v", es)
	}
	ps, err = c.Shim().ProcessStatus(ctx, &shimapi.ProcessStatusRequest{ContainerId: "ctr1"})
	if err != nil || ps.State != shimapi.ProcessState_PROCESS_EXITED || ps.Exit.GetExitCode() != 3 || ps.LogPath != logPath {
		t.Errorf("ProcessStatus: %v %v", ps, err)
	}
	rec, err := ReadExit(dir, "ctr1", "")
	if err != nil || rec.ExitCode != 3 || rec.Reason != ReasonError || rec.LogPath != logPath {
		t.Errorf("exit file: %+v %v", rec, err)
	}
	if _, err := c.Shim().ProcessStatus(ctx, &shimapi.ProcessStatusRequest{ContainerId: "nope"}); !errdefs.IsNotFound(err) {
		t.Errorf("ProcessStatus of an unwatched process: %v, want NotFound", err)
	}
	if _, err := c.Shim().WatchProcess(ctx, &shimapi.WatchProcessRequest{ContainerId: "nope"}); !errdefs.IsNotFound(err) {
		t.Errorf("WatchProcess of a process the guest does not have: %v, want NotFound", err)
	}
	if _, err := c.Shim().WatchProcess(ctx, &shimapi.WatchProcessRequest{ContainerId: "../x"}); !errdefs.IsInvalidArgument(err) {
		t.Errorf("WatchProcess of a bad id: %v, want InvalidArgument", err)
	}

	// An exec that succeeds, watched without a log.
	eid := pid("ctr1", "exec1")
	create(t, c, eid, "true")
	watch(t, c, eid, "")
	start(t, c, eid)
	if ex := waitExit(t, c, eid); ex.ExitCode != 0 || ex.Reason != ReasonCompleted {
		t.Errorf("exec exit: %v", ex)
	}
	if _, err := os.Stat(filepath.Join(dir, ExitsDir, "ctr1.exec1.json")); err != nil {
		t.Error(err)
	}

	// The daemon goes away and comes back: the state is still there.
	c.Close()
	c2, err := Connect(ctx, dir)
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	if c2.Pid() != c.Pid() || c2.ID() != st.Id {
		t.Errorf("Connect: pid %d id %s", c2.Pid(), c2.ID())
	}
	ps, err = c2.Shim().ProcessStatus(ctx, &shimapi.ProcessStatusRequest{ContainerId: "ctr1"})
	if err != nil || ps.Exit.GetExitCode() != 3 {
		t.Errorf("ProcessStatus after re-attaching: %v %v", ps, err)
	}
	list, err := c2.Shim().ListProcesses(ctx, &shimapi.ListProcessesRequest{})
	if err != nil || len(list.Processes) != 2 {
		t.Errorf("ListProcesses: %v %v", list, err)
	}
	if _, err := c2.Agent().Ping(ctx, &agentapi.PingRequest{}); err != nil {
		t.Errorf("Ping after re-attaching: %v", err)
	}
	if _, err := c2.Shim().ForgetProcess(ctx, &shimapi.ForgetProcessRequest{ContainerId: "ctr1", ExecId: "exec1"}); err != nil {
		t.Error(err)
	}
	if _, err := ReadExit(dir, "ctr1", "exec1"); !errdefs.IsNotFound(err) {
		t.Errorf("exit file after ForgetProcess: %v", err)
	}

	// Stop: the agent is asked to power off; the fake VM does not, so it is
	// stopped hard after the grace period.
	exit, err := c2.Stop(ctx, 300*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	if exit == nil || exit.Reason != "killed" {
		t.Errorf("Stop: exit %v", exit)
	}
	if _, err := c2.Stop(ctx, time.Second); err != nil {
		t.Errorf("second Stop: %v", err)
	}
	st, err = c2.State(ctx)
	if err != nil || st.State != shimapi.VMState_VM_STOPPED || st.AgentConnected || st.Exit == nil {
		t.Errorf("State after Stop: %v %v", st, err)
	}
	if _, err := c2.Agent().Ping(ctx, &agentapi.PingRequest{}); !errdefs.IsFailedPrecondition(err) {
		t.Errorf("Ping of a stopped VM: %v, want FailedPrecondition", err)
	}
	// (The host agent refuses: it does not own the machine.)
	if !strings.Contains(readFile(t, filepath.Join(dir, LogFile)), "the agent to power off") {
		t.Errorf("the agent was not asked to shut down")
	}

	// Shutdown: no process, no socket, no pid file; idempotent.
	shimPid := c2.Pid()
	if err := c2.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	if processAlive(shimPid) {
		t.Errorf("shim %d still runs", shimPid)
	}
	for _, f := range []string{SocketFile, PIDFile, fakeAgentPID} {
		if _, err := os.Stat(filepath.Join(dir, f)); err == nil {
			t.Errorf("%s is left", f)
		}
	}
	if err := c2.Shutdown(ctx); err != nil {
		t.Errorf("second Shutdown: %v", err)
	}
	if _, err := Connect(ctx, dir); !errdefs.IsNotFound(err) {
		t.Errorf("Connect after Shutdown: %v, want NotFound", err)
	}
	// The exits stay for a daemon that comes back later, and a new shim
	// in the directory knows them.
	if rec, err := ReadExit(dir, "ctr1", ""); err != nil || rec.ExitCode != 3 {
		t.Errorf("exit file after Shutdown: %v %v", rec, err)
	}
	c3, err := Spawn(ctx, SpawnOptions{Dir: dir, Backend: fakeBackend, Spec: fakeSpec(dir, agentBin)})
	if err != nil {
		t.Fatal(err)
	}
	ps, err = c3.Shim().ProcessStatus(ctx, &shimapi.ProcessStatusRequest{ContainerId: "ctr1"})
	if err != nil || ps.Exit.GetExitCode() != 3 || ps.LogPath != logPath {
		t.Errorf("ProcessStatus from a new shim: %v %v", ps, err)
	}
	if err := c3.Shutdown(ctx); err != nil {
		t.Error(err)
	}
}

// TestSIGTERM: the shim stops its VM and exits cleanly on SIGTERM.
func TestSIGTERM(t *testing.T) {
	dir := sandboxDir(t)
	ctx := ctxT(t, 60*time.Second)
	spec := fakeSpec(dir, agentBin)
	spec.Boot.Cmdline = fakePowerButton
	c, err := Spawn(ctx, SpawnOptions{Dir: dir, Backend: fakeBackend, Spec: spec})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Start(ctx, 30*time.Second); err != nil {
		t.Fatal(err)
	}
	agentPid, err := readPID(filepath.Join(dir, fakeAgentPID))
	if err != nil {
		t.Fatal(err)
	}
	if err := syscall.Kill(c.Pid(), syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := waitGone(ctxT(t, 30*time.Second), c.Pid(), c.exited); err != nil {
		t.Fatal(err)
	}
	if processAlive(agentPid) {
		t.Error("the VM outlived its shim")
	}
	for _, f := range []string{SocketFile, PIDFile} {
		if _, err := os.Stat(filepath.Join(dir, f)); err == nil {
			t.Errorf("%s is left", f)
		}
	}
	log := readFile(t, filepath.Join(dir, LogFile))
	if !strings.Contains(log, "signal: stopping the VM") || !strings.Contains(log, `reason="guest powered off" clean=true`) {
		t.Error("no log of the signal and the clean stop")
	}
}

func readFile(t *testing.T, path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		t.Error(err)
	}
	return string(b)
}

// procSID is the session id of pid.
func procSID(t *testing.T, pid int) int {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		t.Fatal(err)
	}
	f := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+2:]))
	sid, _ := strconv.Atoi(f[3]) // state ppid pgrp session
	return sid
}

func TestForwarding(t *testing.T) {
	c, dir := spawn(t)
	ctx := ctxT(t, 60*time.Second)
	a := c.Agent()

	// Unary.
	info, err := a.Info(ctx, &agentapi.InfoRequest{})
	if err != nil || info.Os != "linux" || len(info.Interfaces) == 0 {
		t.Fatalf("Info: %v %v", info, err)
	}
	if _, err := a.SetHostname(ctx, &agentapi.SetHostnameRequest{Hostname: "pod-a"}); err != nil {
		t.Fatal(err)
	}
	if got := readFile(t, filepath.Join(dir, "etc", "hostname")); got != "pod-a\n" {
		t.Errorf("hostname file: %q", got)
	}
	// The agent's errors come through with their codes.
	if _, err := a.SetHostname(ctx, &agentapi.SetHostnameRequest{Hostname: "bad name!"}); !errdefs.IsInvalidArgument(err) {
		t.Errorf("SetHostname(bad): %v, want InvalidArgument", err)
	}
	if _, err := a.WaitProcess(ctx, &agentapi.WaitProcessRequest{Id: pid("none", "")}); !errdefs.IsNotFound(err) {
		t.Errorf("WaitProcess(unknown): %v, want NotFound", err)
	}

	// ReadOutput (not watched: straight from the agent), with a large
	// output to exercise the flow control through the shim.
	id := pid("out", "")
	create(t, c, id, "sh", "-c", "head -c 3000000 /dev/zero | tr '\\0' x; echo; echo done")
	start(t, c, id)
	r, err := agentapi.OpenOutput(ctx, a, id, agentapi.Stdio_STDOUT, 0)
	if err != nil {
		t.Fatal(err)
	}
	out, err := io.ReadAll(r)
	r.Close()
	if err != nil {
		t.Fatal(err)
	}
	if len(out) != 3000000+1+5 || !strings.HasSuffix(string(out), "x\ndone\n") {
		t.Errorf("ReadOutput: %d bytes, ends %q", len(out), out[max(0, len(out)-10):])
	}
	if w, err := a.WaitProcess(ctx, &agentapi.WaitProcessRequest{Id: id}); err != nil || w.Status.ExitCode != 0 {
		t.Errorf("WaitProcess: %v %v", w, err)
	}

	// Stdin.
	cat := pid("cat", "")
	if _, err := a.CreateProcess(ctx, &agentapi.CreateProcessRequest{Id: cat, Argv: []string{"cat"}, Env: baseEnv(), Stdin: true}); err != nil {
		t.Fatal(err)
	}
	start(t, c, cat)
	if _, err := a.WriteStdin(ctx, &agentapi.WriteStdinRequest{Id: cat, Data: []byte("meow\n")}); err != nil {
		t.Fatal(err)
	}
	if _, err := a.CloseStdin(ctx, &agentapi.CloseStdinRequest{Id: cat}); err != nil {
		t.Fatal(err)
	}
	r, err = agentapi.OpenOutput(ctx, a, cat, agentapi.Stdio_STDOUT, 0)
	if err != nil {
		t.Fatal(err)
	}
	out, _ = io.ReadAll(r)
	r.Close()
	if string(out) != "meow\n" {
		t.Errorf("cat: %q", out)
	}

	// PortForward to a TCP server "in the guest" (the fake guest is the
	// host): an echo server.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		for {
			conn, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				io.Copy(conn, conn)
				conn.Close()
			}()
		}
	}()
	port := l.Addr().(*net.TCPAddr).Port
	fc, err := agentapi.DialPort(ctx, a, uint16(port))
	if err != nil {
		t.Fatal(err)
	}
	payload := bytes.Repeat([]byte("0123456789abcdef"), 100000) // 1.6 MB, beyond one window
	werr := make(chan error, 1)
	go func() {
		_, err := fc.Write(payload)
		if err == nil {
			err = fc.CloseWrite()
		}
		werr <- err
	}()
	got, err := io.ReadAll(fc)
	if err != nil {
		t.Fatal(err)
	}
	if err := <-werr; err != nil {
		t.Fatal(err)
	}
	fc.Close()
	if !bytes.Equal(got, payload) {
		t.Errorf("port-forward echo: %d bytes back of %d", len(got), len(payload))
	}
	// Nothing listens: Unavailable from the agent, through the shim.
	l2, _ := net.Listen("tcp", "127.0.0.1:0")
	closed := l2.Addr().(*net.TCPAddr).Port
	l2.Close()
	if _, err := agentapi.DialPort(ctx, a, uint16(closed)); err == nil {
		t.Error("DialPort to a closed port worked")
	}

	// Everything still answers after the streams.
	if _, err := a.Ping(ctx, &agentapi.PingRequest{}); err != nil {
		t.Error(err)
	}
}

// TestAttachToLoggedOutput: ReadOutput of an output the shim logs is
// served by the shim; the log still gets everything.
func TestAttachToLoggedOutput(t *testing.T) {
	c, _ := spawn(t)
	ctx := ctxT(t, 60*time.Second)
	logPath := filepath.Join(t.TempDir(), "ctr.log")
	id := pid("talker", "")
	create(t, c, id, "sh", "-c", "for i in 1 2 3 4 5 6 7 8; do echo line$i; sleep 0.2; done")
	watch(t, c, id, logPath)
	start(t, c, id)
	time.Sleep(300 * time.Millisecond)
	r, err := agentapi.OpenOutput(ctx, c.Agent(), id, agentapi.Stdio_STDOUT, 0)
	if err != nil {
		t.Fatal(err)
	}
	out, err := io.ReadAll(r)
	r.Close()
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasSuffix(string(out), "line7\nline8\n") || strings.HasPrefix(string(out), "line1\n") {
		t.Errorf("attached reader got %q, want the output from when it attached", out)
	}
	if ex := waitExit(t, c, id); ex.ExitCode != 0 {
		t.Errorf("exit %v", ex)
	}
	want := "line1\nline2\nline3\nline4\nline5\nline6\nline7\nline8\n"
	if got := streamText(readCRILog(t, logPath), "stdout"); got != want {
		t.Errorf("log: %q", got)
	}

	// A reader that detaches early (CloseSend) leaves the log alone.
	id2 := pid("talker2", "")
	create(t, c, id2, "sh", "-c", "for i in 1 2 3 4 5; do echo x$i; sleep 0.1; done")
	logPath2 := filepath.Join(t.TempDir(), "ctr2.log")
	watch(t, c, id2, logPath2)
	start(t, c, id2)
	r2, err := agentapi.OpenOutput(ctx, c.Agent(), id2, agentapi.Stdio_STDOUT, 0)
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 3)
	io.ReadFull(r2, buf)
	r2.Close()
	waitExit(t, c, id2)
	if got := streamText(readCRILog(t, logPath2), "stdout"); got != "x1\nx2\nx3\nx4\nx5\n" {
		t.Errorf("log 2: %q", got)
	}
}

// TestReopenLog: kubelet's rotation (rename, then ReopenContainerLog).
func TestReopenLog(t *testing.T) {
	c, _ := spawn(t)
	ctx := ctxT(t, 60*time.Second)
	logDir := t.TempDir()
	logPath := filepath.Join(logDir, "0.log")
	id := pid("rot", "")
	create(t, c, id, "sh", "-c", "echo before; while [ ! -e "+filepath.Join(logDir, "go")+" ]; do sleep 0.05; done; echo after")
	watch(t, c, id, logPath)
	start(t, c, id)
	waitFor(t, func() bool { return strings.Contains(readFile(t, logPath), "before") })
	if err := os.Rename(logPath, logPath+".1"); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Shim().ReopenLog(ctx, &shimapi.ReopenLogRequest{ContainerId: "rot"}); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(logDir, "go"), nil, 0o644)
	waitExit(t, c, id)
	if got := streamText(readCRILog(t, logPath+".1"), "stdout"); got != "before\n" {
		t.Errorf("rotated log: %q", got)
	}
	if got := streamText(readCRILog(t, logPath), "stdout"); got != "after\n" {
		t.Errorf("new log: %q", got)
	}
	if _, err := c.Shim().ReopenLog(ctx, &shimapi.ReopenLogRequest{ContainerId: "unknown"}); !errdefs.IsNotFound(err) {
		t.Errorf("ReopenLog(unknown): %v", err)
	}
}

// TestLogSymlinkRefused: the shim runs as root; a symbolic link planted
// at a container's log path (first open or a reopen after rotation) is
// not written through.
func TestLogSymlinkRefused(t *testing.T) {
	c, _ := spawn(t)
	ctx := ctxT(t, 60*time.Second)
	logDir := t.TempDir()
	target := filepath.Join(t.TempDir(), "victim")
	if err := os.WriteFile(target, []byte("untouched\n"), 0o600); err != nil {
		t.Fatal(err)
	}

	linked := filepath.Join(logDir, "linked.log")
	if err := os.Symlink(target, linked); err != nil {
		t.Fatal(err)
	}
	id := pid("sym", "")
	create(t, c, id, "sh", "-c", "echo owned")
	_, err := c.Shim().WatchProcess(ctx, &shimapi.WatchProcessRequest{ContainerId: "sym", LogPath: linked})
	if !errdefs.IsFailedPrecondition(err) || !strings.Contains(err.Error(), "symbolic link") {
		t.Errorf("WatchProcess through a symlink: %v, want FailedPrecondition naming the symbolic link", err)
	}
	if _, err := c.Shim().WatchProcess(ctx, &shimapi.WatchProcessRequest{ContainerId: "sym", LogPath: logDir + "/x/../linked.log"}); !errdefs.IsInvalidArgument(err) {
		t.Errorf("WatchProcess with an unclean path: %v, want InvalidArgument", err)
	}

	// Rotation: the file is renamed and a link appears in its place.
	logPath := filepath.Join(logDir, "0.log")
	rid := pid("rot", "")
	create(t, c, rid, "sh", "-c", "echo before; while [ ! -e "+filepath.Join(logDir, "go")+" ]; do sleep 0.05; done; echo after")
	watch(t, c, rid, logPath)
	start(t, c, rid)
	waitFor(t, func() bool { return strings.Contains(readFile(t, logPath), "before") })
	if err := os.Rename(logPath, logPath+".1"); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(target, logPath); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Shim().ReopenLog(ctx, &shimapi.ReopenLogRequest{ContainerId: "rot"}); !errdefs.IsFailedPrecondition(err) {
		t.Errorf("ReopenLog onto a symlink: %v, want FailedPrecondition", err)
	}
	os.WriteFile(filepath.Join(logDir, "go"), nil, 0o644)
	waitExit(t, c, rid)
	if got := readFile(t, target); got != "untouched\n" {
		t.Errorf("the symlink's target was written: %q", got)
	}
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("timed out")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestDaemonKilled: the process that spawned the shim is killed with
// SIGKILL; the shim and its VM keep running and a new client attaches.
func TestDaemonKilled(t *testing.T) {
	dir := sandboxDir(t)
	ctx := ctxT(t, 60*time.Second)
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	sp := exec.Command(self, "spawner", dir, agentBin)
	sp.Stderr = os.Stderr
	stdout, err := sp.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := sp.Start(); err != nil {
		t.Fatal(err)
	}
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil || !strings.HasPrefix(line, "ready ") {
		sp.Process.Kill()
		sp.Wait()
		t.Fatalf("spawner: %q %v", line, err)
	}
	shimPid, _ := strconv.Atoi(strings.TrimSpace(strings.TrimPrefix(line, "ready ")))
	sp.Process.Signal(syscall.SIGKILL)
	sp.Wait()

	time.Sleep(200 * time.Millisecond)
	if !processAlive(shimPid) {
		t.Fatalf("the shim died with its spawner")
	}
	c, err := Connect(ctx, dir)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if c.Pid() != shimPid {
		t.Errorf("pid %d, want %d", c.Pid(), shimPid)
	}
	st, err := c.State(ctx)
	if err != nil || st.State != shimapi.VMState_VM_RUNNING || !st.AgentConnected {
		t.Fatalf("State: %v %v", st, err)
	}
	id := pid("after", "")
	logPath := filepath.Join(t.TempDir(), "after.log")
	create(t, c, id, "sh", "-c", "echo still here")
	watch(t, c, id, logPath)
	start(t, c, id)
	if ex := waitExit(t, c, id); ex.ExitCode != 0 {
		t.Errorf("exit: %v", ex)
	}
	if got := streamText(readCRILog(t, logPath), "stdout"); got != "still here\n" {
		t.Errorf("log: %q", got)
	}
	agentPid, _ := readPID(filepath.Join(dir, fakeAgentPID))
	if err := c.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	if processAlive(shimPid) || processAlive(agentPid) {
		t.Errorf("shim (%d) or VM (%d) still alive", shimPid, agentPid)
	}
	if _, err := os.Stat(filepath.Join(dir, SocketFile)); err == nil {
		t.Error("socket left")
	}
}

// TestAgentReconnect: the agent channel drops while a watched process
// runs; the shim reconnects, the log misses nothing and the exit is
// recorded.
func TestAgentReconnect(t *testing.T) {
	c, dir := spawn(t)
	ctx := ctxT(t, 60*time.Second)
	logPath := filepath.Join(t.TempDir(), "r.log")
	id := pid("long", "")
	create(t, c, id, "sh", "-c", "echo one; sleep 1; echo two; sleep 0.5; echo three; exit 7")
	watch(t, c, id, logPath)
	start(t, c, id)
	waitFor(t, func() bool { return strings.Contains(readFile(t, logPath), "one") })
	if err := os.WriteFile(filepath.Join(dir, dropAgentFile), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool { _, err := os.Stat(filepath.Join(dir, dropAgentFile)); return err != nil })
	ex := waitExit(t, c, id)
	if ex.ExitCode != 7 || ex.Message != "" {
		t.Errorf("exit: %v", ex)
	}
	if got := streamText(readCRILog(t, logPath), "stdout"); got != "one\ntwo\nthree\n" {
		t.Errorf("log: %q", got)
	}
	if _, err := c.Agent().Ping(ctx, &agentapi.PingRequest{}); err != nil {
		t.Errorf("Ping after the reconnect: %v", err)
	}
	if !strings.Contains(readFile(t, filepath.Join(dir, LogFile)), "agent connection closed") {
		t.Error("the shim did not notice the lost connection")
	}
}

// TestVMStopsUnderProcess: the VM dies while a watched process runs: its
// exit is recorded as unknown, with the VM's reason.
func TestVMStopsUnderProcess(t *testing.T) {
	c, dir := spawn(t)
	ctx := ctxT(t, 60*time.Second)
	id := pid("sleeper", "")
	create(t, c, id, "sleep", "60")
	watch(t, c, id, filepath.Join(t.TempDir(), "s.log"))
	start(t, c, id)
	agentPid, err := readPID(filepath.Join(dir, fakeAgentPID))
	if err != nil {
		t.Fatal(err)
	}
	syscall.Kill(agentPid, syscall.SIGKILL) // the "VM" crashes
	ex := waitExit(t, c, id)
	if ex.ExitCode != UnknownExitCode || ex.Reason != ReasonError || !strings.Contains(ex.Message, "VM stopped") {
		t.Errorf("exit: %v", ex)
	}
	st, err := c.State(ctx)
	if err != nil || st.State != shimapi.VMState_VM_STOPPED {
		t.Errorf("State: %v %v", st, err)
	}
	// The shim stays for the daemon.
	if !processAlive(c.Pid()) {
		t.Error("the shim exited with its VM")
	}
}

// TestRemoveWaitsForExit: RemoveProcess through the shim right after a
// watched process exits still leaves its exit and its whole log.
func TestRemoveWaitsForExit(t *testing.T) {
	c, _ := spawn(t)
	ctx := ctxT(t, 60*time.Second)
	logPath := filepath.Join(t.TempDir(), "q.log")
	id := pid("quick", "")
	create(t, c, id, "sh", "-c", "echo bye; exit 5")
	watch(t, c, id, logPath)
	start(t, c, id)
	if _, err := c.Agent().WaitProcess(ctx, &agentapi.WaitProcessRequest{Id: id}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Agent().RemoveProcess(ctx, &agentapi.RemoveProcessRequest{Id: id}); err != nil {
		t.Fatal(err)
	}
	ps, err := c.Shim().ProcessStatus(ctx, &shimapi.ProcessStatusRequest{ContainerId: "quick"})
	if err != nil || ps.State != shimapi.ProcessState_PROCESS_EXITED || ps.Exit.ExitCode != 5 {
		t.Errorf("ProcessStatus: %v %v", ps, err)
	}
	if got := streamText(readCRILog(t, logPath), "stdout"); got != "bye\n" {
		t.Errorf("log: %q", got)
	}

	// Removed before it ever started.
	id2 := pid("never", "")
	create(t, c, id2, "true")
	watch(t, c, id2, "")
	if _, err := c.Agent().RemoveProcess(ctx, &agentapi.RemoveProcessRequest{Id: id2}); err != nil {
		t.Fatal(err)
	}
	if ex := waitExit(t, c, id2); ex.ExitCode != UnknownExitCode || ex.Message == "" {
		t.Errorf("exit of a removed process: %v", ex)
	}
}

func TestKill(t *testing.T) {
	c, dir := spawn(t)
	agentPid, err := readPID(filepath.Join(dir, fakeAgentPID))
	if err != nil {
		t.Fatal(err)
	}
	// A pid file naming some other process is not followed.
	other := exec.Command("sleep", "30")
	if err := other.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { other.Process.Kill(); other.Wait() }()
	// Start returns before the child's exec has finished; until then its
	// command line reads empty and Kill refuses it for that reason instead.
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		if args, err := procArgs(other.Process.Pid); err == nil && filepath.Base(args[0]) == "sleep" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the foreign process never showed sleep's command line")
		}
	}
	shimPid := c.Pid()
	os.WriteFile(filepath.Join(dir, PIDFile), []byte(strconv.Itoa(other.Process.Pid)), 0o600)
	if err := Kill(context.Background(), dir); err == nil || !strings.Contains(err.Error(), "not a macvz shim") {
		t.Errorf("Kill with a foreign pid: %v", err)
	}
	if !processAlive(other.Process.Pid) {
		t.Error("Kill killed a foreign process")
	}
	os.WriteFile(filepath.Join(dir, PIDFile), []byte(strconv.Itoa(shimPid)), 0o600)
	if err := Kill(context.Background(), dir); err != nil {
		t.Fatal(err)
	}
	if processAlive(shimPid) || processAlive(agentPid) {
		t.Errorf("shim (%d) or VM (%d) still alive", shimPid, agentPid)
	}
	if _, err := os.Stat(filepath.Join(dir, SocketFile)); err == nil {
		t.Error("socket left")
	}
	select {
	case <-c.Done():
	case <-time.After(5 * time.Second):
		t.Error("the client did not notice the shim died")
	}
	if _, err := Connect(context.Background(), dir); !errdefs.IsNotFound(err) {
		t.Errorf("Connect: %v", err)
	}
	if err := Kill(context.Background(), dir); err != nil {
		t.Errorf("Kill again: %v", err)
	}
}

func TestConnectDeadShim(t *testing.T) {
	dir := t.TempDir()
	if _, err := Connect(context.Background(), dir); !errdefs.IsNotFound(err) || !strings.Contains(err.Error(), "not running") {
		t.Errorf("Connect without a socket: %v", err)
	}
	// A socket left behind by a shim that died.
	l, err := net.Listen("unix", filepath.Join(dir, SocketFile))
	if err != nil {
		t.Fatal(err)
	}
	l.(*net.UnixListener).SetUnlinkOnClose(false)
	l.Close()
	if _, err := Connect(context.Background(), dir); !errdefs.IsUnavailable(err) || !strings.Contains(err.Error(), "died") {
		t.Errorf("Connect to a dead socket: %v", err)
	}
	// A socket whose owner never answers.
	os.Remove(filepath.Join(dir, SocketFile))
	l, err = net.Listen("unix", filepath.Join(dir, SocketFile))
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			defer c.Close()
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	if _, err := Connect(ctx, dir); !errdefs.IsUnavailable(err) || !strings.Contains(err.Error(), "does not answer") {
		t.Errorf("Connect to a mute socket: %v", err)
	}
}

func TestSpawnErrors(t *testing.T) {
	ctx := ctxT(t, 60*time.Second)
	dir := sandboxDir(t)
	// The shim fails at startup: the error carries its log.
	_, err := Spawn(ctx, SpawnOptions{Dir: dir, Backend: "nosuch", Spec: fakeSpec(dir, agentBin)})
	if err == nil || !strings.Contains(err.Error(), "exited before serving") || !strings.Contains(err.Error(), `unknown VM backend \"nosuch\"`) {
		t.Errorf("Spawn with an unknown backend: %v", err)
	}
	// Validated before anything starts.
	bad := fakeSpec(dir, "")
	if _, err := Spawn(ctx, SpawnOptions{Dir: dir, Backend: fakeBackend, Spec: bad}); !errdefs.IsInvalidArgument(err) {
		t.Errorf("Spawn with an invalid spec: %v", err)
	}
	if _, err := Spawn(ctx, SpawnOptions{Dir: dir, Backend: fakeBackend, Spec: &vm.Spec{ID: "x", Dir: "/elsewhere"}}); !errdefs.IsInvalidArgument(err) {
		t.Errorf("Spawn with another Dir: %v", err)
	}
	// A VM that cannot start.
	c, err := Spawn(ctx, SpawnOptions{Dir: dir, Backend: fakeBackend, Spec: fakeSpec(dir, "/nonexistent/agent")})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Start(ctx, 5*time.Second); err == nil || !strings.Contains(err.Error(), "/nonexistent/agent: no such file") {
		t.Errorf("Start: %v", err)
	}
	// A second shim for the same directory.
	if _, err := Spawn(ctx, SpawnOptions{Dir: dir, Backend: fakeBackend, Spec: fakeSpec(dir, agentBin)}); !errdefs.IsAlreadyExists(err) {
		t.Errorf("second Spawn: %v", err)
	}
	if err := c.Shutdown(ctx); err != nil {
		t.Error(err)
	}
}

// TestStartTimeout: an agent that never answers fails Start with the
// request's deadline and the console's last lines.
func TestStartTimeout(t *testing.T) {
	dir := sandboxDir(t)
	ctx := ctxT(t, 60*time.Second)
	// "sleep" stands in for an agent that never serves.
	sleepBin, err := exec.LookPath("sleep")
	if err != nil {
		t.Skip(err)
	}
	wrapper := filepath.Join(t.TempDir(), "mute-agent")
	os.WriteFile(wrapper, []byte("#!/bin/sh\necho booting a mute guest\nexec "+sleepBin+" 60\n"), 0o755)
	c, err := Spawn(ctx, SpawnOptions{Dir: dir, Backend: fakeBackend, Spec: fakeSpec(dir, wrapper)})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	t0 := time.Now()
	_, err = c.Start(ctx, 700*time.Millisecond)
	if !errdefs.IsDeadlineExceeded(err) || !strings.Contains(err.Error(), "booting a mute guest") {
		t.Errorf("Start: %v", err)
	}
	if d := time.Since(t0); d > 5*time.Second {
		t.Errorf("Start took %s", d)
	}
	st, err := c.State(ctx)
	if err != nil || st.State != shimapi.VMState_VM_RUNNING || st.AgentConnected {
		t.Errorf("State: %v %v", st, err)
	}
	if err := c.Shutdown(ctx); err != nil {
		t.Error(err)
	}
}

// TestLongDirAndSave: a sandbox directory whose socket path is longer
// than sun_path; Save.
func TestLongDirAndSave(t *testing.T) {
	base := t.TempDir()
	dir := filepath.Join(base, strings.Repeat("d", 60), strings.Repeat("e", 60), "sb")
	t.Cleanup(func() { Kill(context.Background(), dir) })
	if len(filepath.Join(dir, SocketFile)) <= 108 {
		t.Fatal("path not long enough")
	}
	ctx := ctxT(t, 60*time.Second)
	c := spawnFake(ctx, t, dir)
	if _, err := c.Start(ctx, 30*time.Second); err != nil {
		t.Fatal(err)
	}
	c2, err := Connect(ctx, dir)
	if err != nil {
		t.Fatal(err)
	}
	c2.Close()
	state := filepath.Join(base, "vm.state")
	if _, err := c.Shim().Save(ctx, &shimapi.SaveRequest{Path: "relative"}); !errdefs.IsInvalidArgument(err) {
		t.Errorf("Save(relative): %v", err)
	}
	if _, err := c.Shim().Save(ctx, &shimapi.SaveRequest{Path: state}); err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(state); err != nil || !strings.HasPrefix(string(b), "fake VM state") {
		t.Errorf("state file: %q %v", b, err)
	}
	// Paused: the agent is not reachable any more.
	if _, err := c.Agent().Ping(ctx, &agentapi.PingRequest{}); !errdefs.IsFailedPrecondition(err) {
		t.Errorf("Ping after Save: %v", err)
	}
	// Resumed: it is again.
	if _, err := c.Shim().Resume(ctx, &shimapi.ResumeRequest{}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Agent().Ping(ctx, &agentapi.PingRequest{}); err != nil {
		t.Errorf("Ping after Resume: %v", err)
	}
	// A plain Save writes no RAM file; one asked for a RAM file goes to
	// the machine's SaveRAMFile.
	if _, err := os.Stat(state + vm.RAMFileSuffix); !os.IsNotExist(err) {
		t.Errorf("a plain Save wrote a RAM file: %v", err)
	}
	warm := filepath.Join(base, "warm.state")
	if err := c.SaveRAMFile(ctx, warm); err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(warm + vm.RAMFileSuffix); err != nil || !strings.HasPrefix(string(b), "fake VM RAM") {
		t.Errorf("RAM file: %q %v", b, err)
	}
	if err := c.Resume(ctx); err != nil {
		t.Fatal(err)
	}
	if err := c.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, SocketFile)); err == nil {
		t.Error("socket left")
	}
}

// TestSaveFails: Save drops the agent connection before the driver
// saves; a save that fails gives it back (the VM runs on), and one after
// which the VM cannot resume leaves it unusable, which every agent call
// then says.
func TestSaveFails(t *testing.T) {
	dir := sandboxDir(t)
	ctx := ctxT(t, 60*time.Second)
	c := spawnFake(ctx, t, dir)
	if _, err := c.Start(ctx, 30*time.Second); err != nil {
		t.Fatal(err)
	}
	state := filepath.Join(t.TempDir(), "vm.state")
	if err := os.WriteFile(filepath.Join(dir, failSaveFile), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Shim().Save(ctx, &shimapi.SaveRequest{Path: state}); err == nil || !strings.Contains(err.Error(), "saving the state failed") {
		t.Fatalf("Save: %v", err)
	}
	// No Resume: the agent answers again.
	if _, err := c.Agent().Ping(ctx, &agentapi.PingRequest{}); err != nil {
		t.Errorf("Ping after a failed Save: %v", err)
	}
	if st, err := c.State(ctx); err != nil || st.State != shimapi.VMState_VM_RUNNING || !st.AgentConnected {
		t.Errorf("State after a failed Save: %v %v", st, err)
	}

	if err := os.WriteFile(filepath.Join(dir, failResumeFile), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := c.Shim().Save(ctx, &shimapi.SaveRequest{Path: state})
	if err == nil || !strings.Contains(err.Error(), "unusable") || !strings.Contains(err.Error(), "resuming failed") {
		t.Fatalf("Save that cannot resume: %v", err)
	}
	if _, err := c.Agent().Ping(ctx, &agentapi.PingRequest{}); !errdefs.IsFailedPrecondition(err) || !strings.Contains(err.Error(), "unusable") {
		t.Errorf("Ping after a Save that cannot resume: %v", err)
	}
	if err := c.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
}

// TestStartNoAgent: a VM started without an agent runs at once, its
// shim never connects, and every agent call (forwarded or the shim's
// own process calls) answers FailedPrecondition naming the missing
// agent; the VM still stops.
func TestStartNoAgent(t *testing.T) {
	dir := sandboxDir(t)
	ctx := ctxT(t, 60*time.Second)
	c := spawnFake(ctx, t, dir)
	r, err := c.Shim().Start(ctx, &shimapi.StartRequest{NoAgent: true})
	if err != nil {
		t.Fatal(err)
	}
	if r.GetAgent() != nil {
		t.Errorf("an agentless start reports an agent: %v", r.GetAgent())
	}
	noAgent := func(what string, err error) {
		t.Helper()
		if !errdefs.IsFailedPrecondition(err) || !strings.Contains(err.Error(), "without the macvz guest agent") || !strings.Contains(err.Error(), "install-agent") {
			t.Errorf("%s without an agent: %v", what, err)
		}
	}
	_, err = c.Agent().Ping(ctx, &agentapi.PingRequest{})
	noAgent("Ping", err)
	_, err = c.StartProcess(ctx, &agentapi.CreateProcessRequest{Id: &agentapi.ProcessID{ContainerId: "c1"}, Argv: []string{"true"}}, "")
	noAgent("StartProcess", err)
	if st, err := c.State(ctx); err != nil || st.State != shimapi.VMState_VM_RUNNING || st.AgentConnected {
		t.Errorf("State of an agentless VM: %v %v", st, err)
	}
	if _, err := c.Stop(ctx, time.Second); err != nil {
		t.Errorf("Stop: %v", err)
	}
	if err := c.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
}

// spawnFake spawns a shim of the fake backend for dir, closed (not shut
// down) when the test ends.
func spawnFake(ctx context.Context, t *testing.T, dir string) *Client {
	t.Helper()
	c, err := Spawn(ctx, SpawnOptions{Dir: dir, Backend: fakeBackend, Spec: fakeSpec(dir, agentBin)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

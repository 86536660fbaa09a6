package agent

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/containerd/ttrpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/macvz/macvz/integration/testutil"
	api "github.com/macvz/macvz/runtime/agentapi"
)

type testAgent struct {
	a      *agent
	client api.AgentClient
	etc    string
}

// startAgent serves an agent (not init, not owning the machine) on a unix
// socket and returns a client.
func startAgent(t *testing.T, opts ...func(*config)) *testAgent {
	t.Helper()
	dir := t.TempDir()
	etc := filepath.Join(dir, "etc")
	cfg := config{etcDir: etc, log: slog.New(slog.NewTextHandler(io.Discard, nil))}
	for _, o := range opts {
		o(&cfg)
	}
	a := newAgent(cfg)
	sock := filepath.Join(dir, "agent.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv, err := ttrpc.NewServer()
	if err != nil {
		t.Fatal(err)
	}
	api.RegisterAgentService(srv, a)
	served := make(chan struct{})
	go func() {
		defer close(served)
		srv.Serve(context.Background(), l)
	}()
	conn, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	c := ttrpc.NewClient(conn)
	t.Cleanup(func() {
		c.Close()
		for _, p := range a.snapshot("") {
			p.signal(syscall.SIGKILL, true)
			p.signal(syscall.SIGKILL, false)
		}
		srv.Close()
		<-served
	})
	return &testAgent{a: a, client: api.NewAgentClient(c), etc: etc}
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func pid(c, e string) *api.ProcessID { return &api.ProcessID{ContainerId: c, ExecId: e} }

func baseEnv() []string {
	return []string{"PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin", "HOME=/"}
}

// run creates and starts a process.
func (ta *testAgent) run(t *testing.T, req *api.CreateProcessRequest) {
	t.Helper()
	ctx := ctxT(t)
	if req.Env == nil {
		req.Env = baseEnv()
	}
	if req.Uid == 0 && req.Gid == 0 && os.Getuid() != 0 {
		req.Uid, req.Gid = uint32(os.Getuid()), uint32(os.Getgid())
	}
	if _, err := ta.client.CreateProcess(ctx, req); err != nil {
		t.Fatalf("CreateProcess: %v", err)
	}
	if _, err := ta.client.StartProcess(ctx, &api.StartProcessRequest{Id: req.Id}); err != nil {
		t.Fatalf("StartProcess: %v", err)
	}
}

func (ta *testAgent) readAll(t *testing.T, id *api.ProcessID, s api.Stdio) string {
	t.Helper()
	r, err := api.OpenOutput(ctxT(t), ta.client, id, s, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	b, err := io.ReadAll(r)
	if err != nil {
		t.Fatalf("reading %v: %v", s, err)
	}
	return string(b)
}

func (ta *testAgent) wait(t *testing.T, id *api.ProcessID) *api.ExitStatus {
	t.Helper()
	r, err := ta.client.WaitProcess(ctxT(t), &api.WaitProcessRequest{Id: id})
	if err != nil {
		t.Fatalf("WaitProcess: %v", err)
	}
	return r.Status
}

func TestPingInfo(t *testing.T) {
	ta := startAgent(t)
	ctx := ctxT(t)
	if _, err := ta.client.Ping(ctx, &api.PingRequest{}); err != nil {
		t.Fatal(err)
	}
	info, err := ta.client.Info(ctx, &api.InfoRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if info.Os != runtime.GOOS || info.Arch != runtime.GOARCH || info.KernelRelease == "" || info.BootTimeUnixNano == 0 || info.MemoryTotalBytes == 0 || info.Pid1 {
		t.Errorf("Info: %v", info)
	}
	// This host has a loopback interface at least.
	if len(info.Interfaces) == 0 {
		t.Errorf("Info lists no interfaces: %v", info)
	}
	brief, err := ta.client.Info(ctx, &api.InfoRequest{SkipInterfaces: true})
	if err != nil {
		t.Fatal(err)
	}
	if len(brief.Interfaces) != 0 || brief.KernelRelease != info.KernelRelease || brief.AgentStartUnixNano != info.AgentStartUnixNano {
		t.Errorf("Info skipping the interfaces: %v", brief)
	}
}

func TestOutputAndExitCode(t *testing.T) {
	ta := startAgent(t)
	id := pid("c1", "")
	ta.run(t, &api.CreateProcessRequest{Id: id, Argv: []string{"sh", "-c", "echo out; echo err >&2; exit 3"}})
	if got := ta.readAll(t, id, api.Stdio_STDOUT); got != "out\n" {
		t.Errorf("stdout %q", got)
	}
	if got := ta.readAll(t, id, api.Stdio_STDERR); got != "err\n" {
		t.Errorf("stderr %q", got)
	}
	st := ta.wait(t, id)
	if st.ExitCode != 3 || st.Signaled || st.ExitedUnixNano == 0 {
		t.Errorf("exit %v", st)
	}
	l, err := ta.client.ListProcesses(ctxT(t), &api.ListProcessesRequest{ContainerId: "c1"})
	if err != nil || len(l.Processes) != 1 || l.Processes[0].State != api.ProcessState_EXITED || l.Processes[0].Exit.ExitCode != 3 {
		t.Errorf("ListProcesses: %v %v", l, err)
	}
	if _, err := ta.client.RemoveProcess(ctxT(t), &api.RemoveProcessRequest{Id: id}); err != nil {
		t.Fatal(err)
	}
	if _, err := ta.client.WaitProcess(ctxT(t), &api.WaitProcessRequest{Id: id}); status.Code(err) != codes.NotFound {
		t.Errorf("WaitProcess after remove: %v", err)
	}
}

func TestErrors(t *testing.T) {
	ta := startAgent(t)
	ctx := ctxT(t)
	check := func(what string, err error, want codes.Code) {
		t.Helper()
		if status.Code(err) != want {
			t.Errorf("%s: %v, want %v", what, err, want)
		}
	}
	_, err := ta.client.CreateProcess(ctx, &api.CreateProcessRequest{Id: pid("", ""), Argv: []string{"true"}})
	check("no container id", err, codes.InvalidArgument)
	_, err = ta.client.CreateProcess(ctx, &api.CreateProcessRequest{Id: pid("c", ""), Env: baseEnv()})
	check("no argv", err, codes.InvalidArgument)
	_, err = ta.client.StartProcess(ctx, &api.StartProcessRequest{Id: pid("nope", "")})
	check("start unknown", err, codes.NotFound)
	_, err = ta.client.CreateProcess(ctx, &api.CreateProcessRequest{Id: pid("c", "x"), Argv: []string{"no-such-binary-here"}, Env: baseEnv(), Uid: uint32(os.Getuid()), Gid: uint32(os.Getgid())})
	check("create", err, codes.OK)
	_, err = ta.client.CreateProcess(ctx, &api.CreateProcessRequest{Id: pid("c", "x"), Argv: []string{"true"}})
	check("create twice", err, codes.AlreadyExists)
	_, err = ta.client.StartProcess(ctx, &api.StartProcessRequest{Id: pid("c", "x")})
	check("start missing binary", err, codes.NotFound)
	if st := ta.wait(t, pid("c", "x")); st.ExitCode != 127 {
		t.Errorf("missing binary exit %v", st)
	}
	_, err = ta.client.StartProcess(ctx, &api.StartProcessRequest{Id: pid("c", "x")})
	check("start twice", err, codes.FailedPrecondition)
	_, err = ta.client.ResizeTty(ctx, &api.ResizeTtyRequest{Id: pid("c", "x"), Size: &api.TerminalSize{Rows: 1, Cols: 1}})
	check("resize without tty", err, codes.FailedPrecondition)
	_, err = ta.client.SetHostname(ctx, &api.SetHostnameRequest{Hostname: "bad name"})
	check("bad hostname", err, codes.InvalidArgument)
	_, err = ta.client.WriteResolvConf(ctx, &api.WriteResolvConfRequest{Nameservers: []string{"1.1.1.1\nnameserver 6.6.6.6"}})
	check("bad resolv.conf", err, codes.InvalidArgument)
	_, err = ta.client.Shutdown(ctx, &api.ShutdownRequest{})
	check("shutdown without --system", err, codes.FailedPrecondition)
	_, err = ta.client.MountShare(ctx, &api.MountShareRequest{Tag: "t", Fstype: "ext4", Target: "/x"})
	check("mount ext4", err, codes.InvalidArgument)
	_, err = ta.client.ConfigureNetwork(ctx, &api.ConfigureNetworkRequest{Interfaces: []*api.Interface{{Mac: "zz"}}})
	check("bad mac", err, codes.InvalidArgument)
	_, err = ta.client.ConfigureNetwork(ctx, &api.ConfigureNetworkRequest{Routes: []*api.Route{{Destination: "10.0.0.0/8"}}})
	check("route without gateway or device", err, codes.InvalidArgument)
}

// Output written before any reader attaches is kept, and a process that
// writes more than the buffer blocks until it is read.
func TestLateReaderBackPressure(t *testing.T) {
	ta := startAgent(t)
	id := pid("c1", "")
	ta.run(t, &api.CreateProcessRequest{Id: id, Argv: []string{"sh", "-c", "echo early; echo early-err >&2"}})
	ta.wait(t, id)
	time.Sleep(50 * time.Millisecond)
	if got := ta.readAll(t, id, api.Stdio_STDOUT); got != "early\n" {
		t.Errorf("stdout %q", got)
	}
	if got := ta.readAll(t, id, api.Stdio_STDERR); got != "early-err\n" {
		t.Errorf("stderr %q", got)
	}

	big := pid("c1", "big")
	const size = 3 << 20
	ta.run(t, &api.CreateProcessRequest{Id: big, Argv: []string{"sh", "-c", "head -c 3145728 /dev/urandom | od -An -v -tx1 | head -c 3145728"}, OutputBufferBytes: 1 << 20})
	ctx, cancel := context.WithTimeout(ctxT(t), 500*time.Millisecond)
	_, err := ta.client.WaitProcess(ctx, &api.WaitProcessRequest{Id: big})
	cancel()
	if status.Code(err) != codes.DeadlineExceeded && !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("the writer did not block on a full buffer: %v", err)
	}
	out := ta.readAll(t, big, api.Stdio_STDOUT)
	if len(out) != size {
		t.Errorf("got %d bytes, want %d", len(out), size)
	}
	if st := ta.wait(t, big); st.ExitCode != 0 {
		t.Errorf("exit %v", st)
	}
}

// A reader that detaches leaves the rest to the next reader: nothing is
// lost or repeated.
func TestReaderDetachResume(t *testing.T) {
	ta := startAgent(t)
	id := pid("c1", "")
	ta.run(t, &api.CreateProcessRequest{Id: id, Argv: []string{"sh", "-c", "i=0; while [ $i -lt 20000 ]; do echo line-$i; i=$((i+1)); done"}})
	var all bytes.Buffer
	r, err := api.OpenOutput(ctxT(t), ta.client, id, api.Stdio_STDOUT, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.CopyN(&all, r, 1000); err != nil {
		t.Fatal(err)
	}
	off := r.Offset()
	r.Close()
	for {
		r, err := api.OpenOutput(ctxT(t), ta.client, id, api.Stdio_STDOUT, off)
		if err != nil {
			t.Fatal(err)
		}
		n, err := io.CopyN(&all, r, 50000)
		off = r.Offset()
		r.Close()
		if err == io.EOF {
			break
		}
		if err != nil || n != 50000 {
			t.Fatal(n, err)
		}
	}
	var want strings.Builder
	for i := range 20000 {
		want.WriteString("line-")
		want.WriteString(itoa(i))
		want.WriteString("\n")
	}
	if all.String() != want.String() {
		t.Errorf("resumed output differs: got %d bytes, want %d", all.Len(), want.Len())
	}
}

func itoa(i int) string {
	if i == 0 {
		return "0"
	}
	var b []byte
	for ; i > 0; i /= 10 {
		b = append([]byte{byte('0' + i%10)}, b...)
	}
	return string(b)
}

func TestStdinCat(t *testing.T) {
	ta := startAgent(t)
	id := pid("c1", "cat")
	ta.run(t, &api.CreateProcessRequest{Id: id, Argv: []string{"cat"}, Stdin: true})
	ctx := ctxT(t)
	var want bytes.Buffer
	for i := range 100 {
		line := []byte("hello " + itoa(i) + "\n")
		want.Write(line)
		if r, err := ta.client.WriteStdin(ctx, &api.WriteStdinRequest{Id: id, Data: line}); err != nil || int(r.Written) != len(line) {
			t.Fatal(r, err)
		}
	}
	if _, err := ta.client.CloseStdin(ctx, &api.CloseStdinRequest{Id: id}); err != nil {
		t.Fatal(err)
	}
	if got := ta.readAll(t, id, api.Stdio_STDOUT); got != want.String() {
		t.Errorf("cat gave %q", got)
	}
	if st := ta.wait(t, id); st.ExitCode != 0 {
		t.Errorf("exit %v", st)
	}
	if _, err := ta.client.WriteStdin(ctx, &api.WriteStdinRequest{Id: id, Data: []byte("x")}); status.Code(err) != codes.FailedPrecondition {
		t.Errorf("WriteStdin after close: %v", err)
	}
}

func TestTTY(t *testing.T) {
	ta := startAgent(t)
	id := pid("c1", "tty")
	ta.run(t, &api.CreateProcessRequest{Id: id, Argv: []string{"sh", "-c", "stty size; read x; stty size; test -t 0 && echo is-a-tty"}, Tty: true, Stdin: true, TerminalSize: &api.TerminalSize{Rows: 24, Cols: 80}})
	ctx := ctxT(t)
	r, err := api.OpenOutput(ctx, ta.client, id, api.Stdio_STDOUT, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	var out bytes.Buffer
	buf := make([]byte, 1024)
	for !strings.Contains(out.String(), "24 80") {
		n, err := r.Read(buf)
		if err != nil {
			t.Fatalf("before resize: %q %v", out.String(), err)
		}
		out.Write(buf[:n])
	}
	if _, err := ta.client.ResizeTty(ctx, &api.ResizeTtyRequest{Id: id, Size: &api.TerminalSize{Rows: 40, Cols: 120}}); err != nil {
		t.Fatal(err)
	}
	if _, err := ta.client.WriteStdin(ctx, &api.WriteStdinRequest{Id: id, Data: []byte("go\n")}); err != nil {
		t.Fatal(err)
	}
	rest, err := io.ReadAll(r)
	if err != nil {
		t.Fatal(err)
	}
	out.Write(rest)
	if !strings.Contains(out.String(), "40 120\r\n") || !strings.Contains(out.String(), "is-a-tty") {
		t.Errorf("tty output %q", out.String())
	}
	if got := ta.readAll(t, id, api.Stdio_STDERR); got != "" {
		t.Errorf("stderr on a tty: %q", got)
	}
	if st := ta.wait(t, id); st.ExitCode != 0 {
		t.Errorf("exit %v", st)
	}
}

func TestSignal(t *testing.T) {
	ta := startAgent(t)
	id := pid("c1", "")
	ta.run(t, &api.CreateProcessRequest{Id: id, Argv: []string{"sleep", "100"}})
	ctx := ctxT(t)
	if _, err := ta.client.SignalProcess(ctx, &api.SignalProcessRequest{Id: id, Signal: uint32(syscall.SIGTERM)}); err != nil {
		t.Fatal(err)
	}
	st := ta.wait(t, id)
	if !st.Signaled || st.Signal != uint32(syscall.SIGTERM) || st.ExitCode != 128+15 {
		t.Errorf("exit %v", st)
	}
	// KillAll reaches the whole group: a shell and its child.
	id2 := pid("c2", "")
	ta.run(t, &api.CreateProcessRequest{Id: id2, Argv: []string{"sh", "-c", "sleep 100; echo not-killed"}})
	time.Sleep(50 * time.Millisecond)
	if r, err := ta.client.KillAll(ctx, &api.KillAllRequest{ContainerId: "c2"}); err != nil || r.Signaled != 1 {
		t.Fatal(r, err)
	}
	if st := ta.wait(t, id2); st.Signal != uint32(syscall.SIGKILL) {
		t.Errorf("exit %v", st)
	}
	if got := ta.readAll(t, id2, api.Stdio_STDOUT); got != "" {
		t.Errorf("output %q", got)
	}
}

func TestCredentials(t *testing.T) {
	testutil.RequireRoot(t)
	forEachHelper(t, testCredentials)
}

func testCredentials(t *testing.T, helper func(*config)) {
	ta := startAgent(t, helper)
	id := pid("c1", "")
	ta.run(t, &api.CreateProcessRequest{Id: id, Argv: []string{"sh", "-c", "id -u; id -g; id -G; pwd"}, Uid: 65534, Gid: 65534, AdditionalGids: []uint32{65534, 100}, Cwd: "/tmp"})
	if got := ta.readAll(t, id, api.Stdio_STDOUT); got != "65534\n65534\n65534 100\n/tmp\n" {
		t.Errorf("id: %q (stderr %q)", got, ta.readAll(t, id, api.Stdio_STDERR))
	}
	if st := ta.wait(t, id); st.ExitCode != 0 {
		t.Errorf("exit %v", st)
	}
}

// A container's working directory is created when missing (kubelet's
// workingDir need not exist in the image); an exec's is not.
func TestContainerWorkingDirIsCreated(t *testing.T) {
	ta := startAgent(t)
	wd := filepath.Join(t.TempDir(), "srv", "app")
	ta.run(t, &api.CreateProcessRequest{Id: pid("c1", ""), Argv: []string{"pwd"}, Cwd: wd})
	if got := ta.readAll(t, pid("c1", ""), api.Stdio_STDOUT); got != wd+"\n" {
		t.Errorf("pwd: %q", got)
	}
	missing := filepath.Join(t.TempDir(), "missing")
	_, err := ta.client.CreateProcess(ctxT(t), &api.CreateProcessRequest{Id: pid("c1", "e1"), Argv: []string{"pwd"}, Cwd: missing})
	if err == nil {
		_, err = ta.client.StartProcess(ctxT(t), &api.StartProcessRequest{Id: pid("c1", "e1")})
	}
	if err == nil {
		t.Errorf("an exec in a missing directory started")
	}
	if _, serr := os.Stat(missing); !os.IsNotExist(serr) {
		t.Errorf("the exec's directory was created (%v)", serr)
	}
}

func TestEnvIsExact(t *testing.T) {
	ta := startAgent(t)
	id := pid("c1", "")
	ta.run(t, &api.CreateProcessRequest{Id: id, Argv: []string{"/usr/bin/env"}, Env: []string{"A=1", "B=two words"}})
	if got := ta.readAll(t, id, api.Stdio_STDOUT); got != "A=1\nB=two words\n" {
		t.Errorf("env %q", got)
	}
}

// echoServer echoes every connection until EOF, then closes it.
func echoServer(t *testing.T) int {
	l, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				io.Copy(c, c)
				c.Close()
			}()
		}
	}()
	return l.Addr().(*net.TCPAddr).Port
}

func TestPortForward(t *testing.T) {
	ta := startAgent(t)
	port := echoServer(t)
	ctx := ctxT(t)
	c, err := api.DialPort(ctx, ta.client, uint16(port))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	data := make([]byte, 5<<20)
	rand.Read(data)
	werr := make(chan error, 1)
	go func() {
		_, err := c.Write(data)
		if err == nil {
			err = c.CloseWrite()
		}
		werr <- err
	}()
	got, err := io.ReadAll(c)
	if err != nil {
		t.Fatal(err)
	}
	if err := <-werr; err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, data) {
		t.Errorf("echo returned %d bytes, want %d (equal prefix: %v)", len(got), len(data), bytes.HasPrefix(data, got))
	}

	// Nothing listens: Unavailable.
	l, _ := net.Listen("tcp4", "127.0.0.1:0")
	free := l.Addr().(*net.TCPAddr).Port
	l.Close()
	if _, err := api.DialPort(ctx, ta.client, uint16(free)); status.Code(err) != codes.Unavailable {
		t.Errorf("dial closed port: %v", err)
	}
}

// TestPortForwardWriteBeforeRead: a guest program that writes 4 MiB
// before it reads anything, while the host writes 4 MiB to it and reads
// what comes: both complete. While the agent cannot write to the guest
// (the program is not reading), it still takes the host's acks for the
// other direction, so the program's writes get through and it goes on to
// read. The guest program is a server on a port, and a client of a listen
// socket (a unix socket: the kernel holds little of what is written to
// it, where loopback TCP may buffer megabytes and hide a stuck tunnel).
func TestPortForwardWriteBeforeRead(t *testing.T) {
	sockDir := filepath.Join(t.TempDir(), "run")
	ta := startAgent(t, func(c *config) { c.socketDir = sockDir })
	const size = 4 << 20
	toHost, toGuest := make([]byte, size), make([]byte, size)
	rand.Read(toHost)
	rand.Read(toGuest)
	type result struct {
		b   []byte
		err error
	}
	// guest writes all of toHost, then reads the host's 4 MiB.
	guest := func(c net.Conn, got chan<- result) {
		defer c.Close()
		if _, err := c.Write(toHost); err != nil {
			got <- result{nil, err}
			return
		}
		b := make([]byte, size)
		_, err := io.ReadFull(c, b)
		got <- result{b, err}
	}
	run := func(t *testing.T, open func(ctx context.Context, guestGot chan<- result) (*api.ForwardConn, error)) {
		ctx := ctxT(t)
		guestGot := make(chan result, 1)
		c, err := open(ctx, guestGot)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		hostWrote := make(chan error, 1)
		go func() {
			_, err := c.Write(toGuest)
			hostWrote <- err
		}()
		hostGot := make(chan result, 1)
		go func() {
			b, err := io.ReadAll(c)
			hostGot <- result{b, err}
		}()
		timeout := time.After(20 * time.Second)
		for range 3 {
			select {
			case err := <-hostWrote:
				if err != nil {
					t.Errorf("host write: %v", err)
				}
			case r := <-guestGot:
				if r.err != nil || !bytes.Equal(r.b, toGuest) {
					t.Errorf("the guest read %d bytes (%v), want the host's %d", len(r.b), r.err, size)
				}
			case r := <-hostGot:
				if r.err != nil || !bytes.Equal(r.b, toHost) {
					t.Errorf("the host read %d bytes (%v), want the guest's %d", len(r.b), r.err, size)
				}
			case <-timeout:
				t.Fatal("the tunnel is stuck: both sides write, neither completes")
			}
		}
	}

	t.Run("server", func(t *testing.T) {
		l, err := net.Listen("tcp4", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		run(t, func(ctx context.Context, guestGot chan<- result) (*api.ForwardConn, error) {
			go func() {
				c, err := l.Accept()
				if err != nil {
					guestGot <- result{nil, err}
					return
				}
				// Small buffers on the guest's end.
				c.(*net.TCPConn).SetReadBuffer(64 << 10)
				c.(*net.TCPConn).SetWriteBuffer(64 << 10)
				guest(c, guestGot)
			}()
			return api.DialPort(ctx, ta.client, uint16(l.Addr().(*net.TCPAddr).Port))
		})
	})
	t.Run("listen", func(t *testing.T) {
		path := filepath.Join(sockDir, "fwd.sock")
		run(t, func(ctx context.Context, guestGot chan<- result) (*api.ForwardConn, error) {
			go func() {
				// The agent makes the socket once the host waits on it.
				for {
					c, err := net.Dial("unix", path)
					if err == nil {
						guest(c, guestGot)
						return
					}
					if ctx.Err() != nil {
						guestGot <- result{nil, err}
						return
					}
					time.Sleep(10 * time.Millisecond)
				}
			}()
			return api.AcceptGuest(ctx, ta.client, "unix:"+path)
		})
	})
}

func TestStats(t *testing.T) {
	ta := startAgent(t)
	id := pid("c1", "")
	ta.run(t, &api.CreateProcessRequest{Id: id, Argv: []string{"sleep", "100"}})
	r, err := ta.client.Stats(ctxT(t), &api.StatsRequest{FilesystemPaths: []string{"/", "/no/such/dir"}, PerContainer: true})
	if err != nil {
		t.Fatal(err)
	}
	if r.Memory.TotalBytes == 0 || r.Memory.WorkingSetBytes == 0 || r.Memory.AvailableBytes == 0 || r.Cpu.UsageCoreNanoseconds == 0 || r.Cpu.NumCpu == 0 {
		t.Errorf("stats %v", r)
	}
	if len(r.Filesystems) != 2 || r.Filesystems[0].CapacityBytes == 0 || r.Filesystems[1].Error == "" {
		t.Errorf("filesystems %v", r.Filesystems)
	}
	if len(r.Containers) != 1 || r.Containers[0].ContainerId != "c1" || r.Containers[0].Processes != 1 || r.Containers[0].MemoryRssBytes == 0 {
		t.Errorf("containers %v", r.Containers)
	}
}

func TestHostnameResolvConf(t *testing.T) {
	ta := startAgent(t)
	ctx := ctxT(t)
	if _, err := ta.client.SetHostname(ctx, &api.SetHostnameRequest{Hostname: "pod-1"}); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(filepath.Join(ta.etc, "hostname")); string(b) != "pod-1\n" {
		t.Errorf("hostname file %q", b)
	}
	if _, err := ta.client.WriteResolvConf(ctx, &api.WriteResolvConfRequest{Nameservers: []string{"10.96.0.10", "fd00::a"}, Searches: []string{"default.svc.cluster.local", "svc.cluster.local"}, Options: []string{"ndots:5"}}); err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(filepath.Join(ta.etc, "resolv.conf"))
	want := "# written by macvz-agent\nnameserver 10.96.0.10\nnameserver fd00::a\nsearch default.svc.cluster.local svc.cluster.local\noptions ndots:5\n"
	if string(b) != want {
		t.Errorf("resolv.conf %q", b)
	}
}

// Streams whose clients go away leave no goroutines behind.
func TestNoGoroutineLeak(t *testing.T) {
	ta := startAgent(t)
	port := echoServer(t)
	ctx := ctxT(t)
	// Warm up the connection's own goroutines.
	ta.client.Ping(ctx, &api.PingRequest{})
	time.Sleep(20 * time.Millisecond)
	before := runtime.NumGoroutine()

	for i := range 5 {
		id := pid("leak", itoa(i))
		ta.run(t, &api.CreateProcessRequest{Id: id, Argv: []string{"sh", "-c", "echo hi; sleep 0.2; echo bye"}, Stdin: true})
		r, err := api.OpenOutput(ctx, ta.client, id, api.Stdio_STDOUT, 0)
		if err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, 3)
		io.ReadFull(r, buf)
		r.Close() // detach mid-stream
		r2, err := api.OpenOutput(ctx, ta.client, id, api.Stdio_STDERR, 0)
		if err != nil {
			t.Fatal(err)
		}
		r2.Close() // detach at once
		c, err := api.DialPort(ctx, ta.client, uint16(port))
		if err != nil {
			t.Fatal(err)
		}
		c.Write([]byte("ping"))
		io.ReadFull(c, buf[:3])
		c.Close()
		ta.wait(t, id)
		ta.client.CloseStdin(ctx, &api.CloseStdinRequest{Id: id})
		ta.readAll(t, id, api.Stdio_STDOUT)
		ta.client.RemoveProcess(ctx, &api.RemoveProcessRequest{Id: id})
	}
	var now int
	for range 100 {
		now = runtime.NumGoroutine()
		if now <= before+2 { // the echo server's finished handlers may lag
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	buf := make([]byte, 1<<20)
	t.Errorf("goroutines: %d before, %d after\n%s", before, now, buf[:runtime.Stack(buf, true)])
}

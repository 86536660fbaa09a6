package shim

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/containerd/errdefs"
	"github.com/containerd/errdefs/pkg/errgrpc"
	"github.com/containerd/ttrpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/macvz/macvz/runtime/agentapi"
	"github.com/macvz/macvz/runtime/shimapi"
	"github.com/macvz/macvz/runtime/vm"
)

// Client timing.
var (
	// DefaultSpawnTimeout bounds Spawn's wait for the shim's socket.
	DefaultSpawnTimeout = 10 * time.Second
	// connectTimeout bounds Connect's first call when ctx has no deadline.
	connectTimeout = 5 * time.Second
)

// SpawnOptions describe a shim to start.
type SpawnOptions struct {
	// Binary is the macvz executable, run as `<Binary> shim --dir <Dir>`;
	// default os.Executable().
	Binary string
	// Dir is the sandbox state directory (created if missing).
	Dir string
	// Backend names the VM backend ("qemu", "vz").
	Backend string
	// Spec is the VM. Its Dir is set to Dir (a different non-empty Dir is
	// an error); ID is required.
	Spec *vm.Spec
	// LogLevel of shim.log (default info).
	LogLevel string
	// Timeout bounds the wait for the shim to serve (default
	// DefaultSpawnTimeout; ctx may end it sooner).
	Timeout time.Duration
	// Env is added to the shim's environment.
	Env []string
	// AgentCalls, when set, is told of the client's guest agent calls
	// (see AgentCallObserver).
	AgentCalls AgentCallObserver
}

// AgentCallObserver is told of each unary call a Client makes to the
// guest agent through the shim (which forwards it): the agent method, how
// long the round trip took, and its error. WaitProcess is left out: it
// lasts as long as the process it waits for. The daemon's metrics use it
// (cri/opmetrics); the shim's own keepalive pings to the agent run in the
// shim's process and are not seen here.
type AgentCallObserver func(method string, took time.Duration, err error)

// agentService is the ttrpc service name of the guest agent's calls.
const agentService = "macvz.agent.v1.Agent"

// Client is a connection to one shim. Its Shim and Agent clients share
// the connection. Unary calls return errdefs errors (errgrpc.ToNative of
// the shim's status; a lost connection is errdefs.ErrUnavailable);
// streams (ReadOutput, PortForward) return the ttrpc statuses as they
// come.
type Client struct {
	dir    string
	id     string
	pid    int
	tc     *ttrpc.Client
	shim   shimapi.ShimService
	agent  agentapi.AgentClient
	done   chan struct{}
	exited <-chan struct{} // Spawn only: closed once the shim was reaped
	// legacy: the shim answered Unimplemented to one of the process
	// calls added after v1 (StartProcess, RemoveProcess): it was started
	// by an older daemon, so the calls it has are used from then on.
	legacy atomic.Bool
}

// Spawn starts a shim for o.Dir (see the package documentation for how it
// is detached and reaped) and returns a client once it serves. It writes
// spec.json and shim.json first. A shim that fails to come up is killed,
// and the error carries the end of shim.log. A live shim already serving
// o.Dir is errdefs.ErrAlreadyExists.
func Spawn(ctx context.Context, o SpawnOptions) (*Client, error) {
	if o.Dir == "" || o.Spec == nil || o.Backend == "" {
		return nil, fmt.Errorf("%w: spawning a shim needs Dir, Spec and Backend", errdefs.ErrInvalidArgument)
	}
	dir, err := filepath.Abs(o.Dir)
	if err != nil {
		return nil, err
	}
	spec := *o.Spec
	if spec.Dir != "" && filepath.Clean(spec.Dir) != dir {
		return nil, fmt.Errorf("%w: spec.Dir %q is not the shim's directory %q", errdefs.ErrInvalidArgument, spec.Dir, dir)
	}
	spec.Dir = dir
	if spec.ID == "" {
		return nil, fmt.Errorf("%w: spec.ID is empty", errdefs.ErrInvalidArgument)
	}
	if o.LogLevel != "" {
		var lv slog.Level
		if err := lv.UnmarshalText([]byte(o.LogLevel)); err != nil {
			return nil, fmt.Errorf("%w: log level %q", errdefs.ErrInvalidArgument, o.LogLevel)
		}
	}
	// Check what we can here: the shim would only fail later.
	if b, err := lookupBackend(o.Backend); err == nil {
		d, err := b.New()
		if err != nil {
			return nil, err
		}
		if err := d.Validate(&spec); err != nil {
			return nil, err
		}
	}
	binary := o.Binary
	if binary == "" {
		if binary, err = os.Executable(); err != nil {
			return nil, fmt.Errorf("finding the macvz executable: %w", err)
		}
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	cctx, cancel := context.WithTimeout(ctx, time.Second)
	c, err := Connect(cctx, dir)
	cancel()
	if err == nil {
		c.Close()
		return nil, fmt.Errorf("%w: a shim (pid %d) already serves %s", errdefs.ErrAlreadyExists, c.pid, dir)
	}
	if err := writeJSON(filepath.Join(dir, SpecFile), &spec, 0o600); err != nil {
		return nil, err
	}
	if err := writeJSON(filepath.Join(dir, ConfigFile), &Config{Backend: o.Backend, LogLevel: o.LogLevel}, 0o600); err != nil {
		return nil, err
	}
	os.Remove(filepath.Join(dir, SocketFile))

	logPath := filepath.Join(dir, LogFile)
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, err
	}
	slog.New(slog.NewTextHandler(logf, nil)).Info("spawning the shim", "sandbox", spec.ID, "binary", binary, "backend", o.Backend)
	cmd := exec.Command(binary, "shim", "--dir", dir)
	cmd.Dir = dir
	cmd.Stdout, cmd.Stderr = logf, logf // stdin: /dev/null
	cmd.Env = append(shimEnv(os.Environ()), o.Env...)
	// A session of its own; deliberately no parent-death signal.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	err = cmd.Start()
	logf.Close()
	if err != nil {
		return nil, fmt.Errorf("starting the shim %s: %w", binary, err)
	}
	exited := make(chan struct{})
	var waitErr error
	go func() {
		// Reaps the shim whenever it exits while this process lives.
		waitErr = cmd.Wait()
		close(exited)
	}()

	timeout := o.Timeout
	if timeout <= 0 {
		timeout = DefaultSpawnTimeout
	}
	wctx, wcancel := context.WithTimeout(ctx, timeout)
	defer wcancel()
	fail := func(why string) (*Client, error) {
		cmd.Process.Kill()
		<-exited
		err := fmt.Errorf("shim for %s %s", dir, why)
		if tail := fileTail(logPath, 4096, 20); tail != "" {
			err = fmt.Errorf("%w; shim.log ends with:\n%s", err, tail)
		}
		return nil, err
	}
	delay := 5 * time.Millisecond
	for {
		select {
		case <-exited:
			return fail(fmt.Sprintf("exited before serving (%v)", waitErr))
		default:
		}
		cctx, cancel := context.WithTimeout(wctx, time.Second)
		c, err := connect(cctx, dir, o.AgentCalls)
		cancel()
		if err == nil {
			if c.pid != cmd.Process.Pid {
				c.Close()
				return fail(fmt.Sprintf("did not serve: pid %d answers on its socket", c.pid))
			}
			c.exited = exited
			return c, nil
		}
		t := time.NewTimer(delay)
		select {
		case <-exited:
			t.Stop()
			return fail(fmt.Sprintf("exited before serving (%v)", waitErr))
		case <-wctx.Done():
			t.Stop()
			return fail(fmt.Sprintf("did not serve within %s: %v", timeout, err))
		case <-t.C:
		}
		delay = min(2*delay, 100*time.Millisecond)
	}
}

// Connect attaches to the live shim of dir. No socket is
// errdefs.ErrNotFound; a socket nobody listens on or a shim that does not
// answer is errdefs.ErrUnavailable.
func Connect(ctx context.Context, dir string) (*Client, error) {
	return connect(ctx, dir, nil)
}

func connect(ctx context.Context, dir string, agentCalls AgentCallObserver) (*Client, error) {
	dir, err := filepath.Abs(dir)
	if err != nil {
		return nil, err
	}
	sock := filepath.Join(dir, SocketFile)
	conn, err := dialSocket(ctx, sock)
	if err != nil {
		switch {
		case errors.Is(err, fs.ErrNotExist):
			return nil, fmt.Errorf("%w: the shim for %s is not running: no socket %s (it exited or never started)", errdefs.ErrNotFound, dir, sock)
		case errors.Is(err, syscall.ECONNREFUSED):
			return nil, fmt.Errorf("%w: the shim for %s died: nothing listens on %s", errdefs.ErrUnavailable, dir, sock)
		}
		return nil, fmt.Errorf("%w: connecting to the shim for %s: %w", errdefs.ErrUnavailable, dir, err)
	}
	c := &Client{dir: dir, done: make(chan struct{})}
	intercept := clientErrors
	if agentCalls != nil {
		intercept = observeAgentCalls(agentCalls)
	}
	c.tc = ttrpc.NewClient(conn,
		ttrpc.WithOnClose(func() { close(c.done) }),
		ttrpc.WithUnaryClientInterceptor(intercept))
	c.shim = shimapi.NewShimClient(c.tc)
	c.agent = agentapi.NewAgentClient(c.tc)
	sctx := ctx
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		sctx, cancel = context.WithTimeout(ctx, connectTimeout)
		defer cancel()
	}
	st, err := c.shim.State(sctx, &shimapi.StateRequest{})
	if err != nil {
		c.tc.Close()
		return nil, fmt.Errorf("%w: the shim for %s does not answer (it died or hangs): %w", errdefs.ErrUnavailable, dir, err)
	}
	c.pid, c.id = int(st.ShimPid), st.Id
	return c, nil
}

// clientErrors converts the shim's statuses to errdefs errors.
func clientErrors(ctx context.Context, req *ttrpc.Request, resp *ttrpc.Response, info *ttrpc.UnaryClientInfo, invoker ttrpc.Invoker) error {
	err := invoker(ctx, req, resp)
	if err == nil {
		// ttrpc's Call turns resp.Status into its error after the
		// interceptor: take it over here.
		if st := resp.Status; st != nil && codes.Code(st.Code) != codes.OK {
			resp.Status = nil
			return errgrpc.ToNative(status.ErrorProto(st))
		}
		return nil
	}
	if errors.Is(err, ttrpc.ErrClosed) {
		return fmt.Errorf("%w: %s: the connection to the shim closed: %w", errdefs.ErrUnavailable, info.FullMethod, err)
	}
	return errgrpc.ToNative(err)
}

// observeAgentCalls is clientErrors that also times the agent's calls
// (with their errors as the caller sees them) for obs.
func observeAgentCalls(obs AgentCallObserver) ttrpc.UnaryClientInterceptor {
	prefix := "/" + agentService + "/"
	return func(ctx context.Context, req *ttrpc.Request, resp *ttrpc.Response, info *ttrpc.UnaryClientInfo, invoker ttrpc.Invoker) error {
		method, ok := strings.CutPrefix(info.FullMethod, prefix)
		if !ok || method == "WaitProcess" {
			return clientErrors(ctx, req, resp, info, invoker)
		}
		start := time.Now()
		err := clientErrors(ctx, req, resp, info, invoker)
		obs(method, time.Since(start), err)
		return err
	}
}

// Dir is the shim's sandbox directory.
func (c *Client) Dir() string { return c.dir }

// ID is the sandbox id the shim runs.
func (c *Client) ID() string { return c.id }

// Pid is the shim's process id.
func (c *Client) Pid() int { return c.pid }

// Shim is the shim API.
func (c *Client) Shim() shimapi.ShimService { return c.shim }

// Agent is the guest agent's API, forwarded by the shim.
func (c *Client) Agent() agentapi.AgentClient { return c.agent }

// Done is closed when the connection closes (Close, or the shim died).
func (c *Client) Done() <-chan struct{} { return c.done }

// Close closes the connection; the shim keeps running.
func (c *Client) Close() error {
	return c.tc.Close()
}

// Start boots the VM and waits for the guest agent until agentTimeout
// after the call (0: the shim's default or ctx's deadline).
func (c *Client) Start(ctx context.Context, agentTimeout time.Duration) (*shimapi.StartResponse, error) {
	return c.shim.Start(ctx, &shimapi.StartRequest{AgentTimeoutNs: int64(agentTimeout)})
}

// State is the VM's state.
func (c *Client) State(ctx context.Context) (*shimapi.StateResponse, error) {
	return c.shim.State(ctx, &shimapi.StateRequest{})
}

// Stop stops the VM: the agent powers it off, and after grace it is
// stopped hard.
func (c *Client) Stop(ctx context.Context, grace time.Duration) (*shimapi.VMExit, error) {
	r, err := c.shim.Stop(ctx, &shimapi.StopRequest{GraceNs: int64(grace)})
	if err != nil {
		return nil, err
	}
	return r.Exit, nil
}

// Save pauses the VM and writes its state to path; Resume continues it.
func (c *Client) Save(ctx context.Context, path string) error {
	_, err := c.shim.Save(ctx, &shimapi.SaveRequest{Path: path})
	return err
}

// SaveRAMFile is Save with the guest RAM in a file of its own beside
// path when the VM's backend can (vm.RAMFileSaver), for a warm start.
func (c *Client) SaveRAMFile(ctx context.Context, path string) error {
	_, err := c.shim.Save(ctx, &shimapi.SaveRequest{Path: path, RamFile: true})
	return err
}

// Resume continues a VM paused by Save.
func (c *Client) Resume(ctx context.Context) error {
	_, err := c.shim.Resume(ctx, &shimapi.ResumeRequest{})
	return err
}

// Shutdown makes the shim stop the VM (hard, if it still runs) and exit,
// and waits until the shim process is gone (or ctx ends). A shim that is
// already gone is fine. The client is closed.
func (c *Client) Shutdown(ctx context.Context) error {
	_, err := c.shim.Shutdown(ctx, &shimapi.ShutdownRequest{})
	c.Close()
	if err != nil && !errdefs.IsUnavailable(err) {
		return err
	}
	return waitGone(ctx, c.pid, c.exited)
}

// waitGone waits until pid has exited.
func waitGone(ctx context.Context, pid int, exited <-chan struct{}) error {
	if exited != nil {
		select {
		case <-exited:
			return nil
		case <-ctx.Done():
			return fmt.Errorf("waiting for the shim (pid %d) to exit: %w", pid, ctx.Err())
		}
	}
	for processAlive(pid) {
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for the shim (pid %d) to exit: %w", pid, ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
	return nil
}

// ReadExit reads a watched process's exit file without the shim (after it
// died). A process without one is errdefs.ErrNotFound.
func ReadExit(dir, containerID, execID string) (*ExitRecord, error) {
	k, err := keyOf(containerID, execID)
	if err != nil {
		return nil, errgrpc.ToNative(err)
	}
	var r ExitRecord
	if err := readJSON(filepath.Join(dir, ExitsDir, k.fileName()), &r); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("%w: no exit recorded for %s", errdefs.ErrNotFound, k)
		}
		return nil, err
	}
	return &r, nil
}

// Kill cleans up the shim of dir when it no longer answers: it kills the
// process in shim.pid, after checking that it is a `shim --dir <dir>`,
// and the backend's VM process (qemu.pid, after checking that it runs in
// dir), then removes shim.sock and shim.pid. Nothing to kill is fine.
// Use Shutdown for a shim that answers.
func Kill(ctx context.Context, dir string) error {
	dir, err := filepath.Abs(dir)
	if err != nil {
		return err
	}
	var errs []error
	killed := false
	if pid, err := readPID(filepath.Join(dir, PIDFile)); err == nil && processAlive(pid) {
		if ok, why := isShimFor(pid, dir); ok {
			if err := syscall.Kill(pid, syscall.SIGKILL); err != nil && !errors.Is(err, syscall.ESRCH) {
				errs = append(errs, fmt.Errorf("killing the shim (pid %d): %w", pid, err))
			} else if err := waitGone(ctx, pid, nil); err != nil {
				errs = append(errs, err)
			}
			killed = true
		} else {
			errs = append(errs, fmt.Errorf("not killing pid %d from %s: %s", pid, filepath.Join(dir, PIDFile), why))
		}
	}
	// The VM process: QEMU dies with its shim (parent-death signal), but
	// make sure.
	for _, name := range vmPIDFiles() {
		pid, err := readPID(filepath.Join(dir, name))
		if err != nil || !processAlive(pid) {
			continue
		}
		if killed {
			wctx, cancel := context.WithTimeout(ctx, time.Second)
			err := waitGone(wctx, pid, nil)
			cancel()
			if err == nil {
				os.Remove(filepath.Join(dir, name))
				continue
			}
		}
		if cwd, err := procCwd(pid); err != nil || !sameDir(cwd, dir) {
			if !processAlive(pid) {
				continue
			}
			errs = append(errs, fmt.Errorf("not killing pid %d from %s: it does not run in %s", pid, name, dir))
			continue
		}
		if err := syscall.Kill(pid, syscall.SIGKILL); err != nil && !errors.Is(err, syscall.ESRCH) {
			errs = append(errs, fmt.Errorf("killing the VM process (pid %d): %w", pid, err))
		} else if err := waitGone(ctx, pid, nil); err != nil {
			errs = append(errs, err)
		}
		os.Remove(filepath.Join(dir, name))
	}
	if len(errs) == 0 {
		os.Remove(filepath.Join(dir, SocketFile))
		os.Remove(filepath.Join(dir, PIDFile))
	}
	return errors.Join(errs...)
}

func readPID(path string) (int, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 0 {
		return 0, fmt.Errorf("%s: bad pid %q", path, b)
	}
	return pid, nil
}

// isShimFor checks that pid runs `... shim --dir dir`.
func isShimFor(pid int, dir string) (bool, string) {
	args, err := procArgs(pid)
	if err != nil {
		return false, err.Error()
	}
	if len(args) < 2 || args[1] != "shim" {
		return false, fmt.Sprintf("its command line %q is not a macvz shim", args)
	}
	for i, a := range args[2:] {
		var d string
		if a == "--dir" && i+3 < len(args) {
			d = args[i+3]
		} else if v, ok := strings.CutPrefix(a, "--dir="); ok {
			d = v
		} else {
			continue
		}
		if sameDir(d, dir) {
			return true, ""
		}
		return false, fmt.Sprintf("it is the shim of %s", d)
	}
	return false, fmt.Sprintf("its command line %q names no --dir", args)
}

// shimEnv is the daemon's environment without what belongs to the
// daemon's service manager (socket activation, readiness notification).
func shimEnv(env []string) []string {
	out := make([]string, 0, len(env))
	for _, e := range env {
		k, _, _ := strings.Cut(e, "=")
		switch k {
		case "NOTIFY_SOCKET", "LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES", "WATCHDOG_PID", "WATCHDOG_USEC":
			continue
		}
		out = append(out, e)
	}
	return out
}

// StartProcess runs a process in the guest under the shim's watch: it is
// created (create names it), watched (its output copied to logPath when
// that is not "", its exit recorded) and started. It returns the host
// time taken just before the start. A failure after the create removes
// the process from the guest and from the shim: nothing is left behind.
//
// A shim started by an older daemon has no StartProcess call (it answers
// Unimplemented): the client then makes the calls that shim has, as
// older daemons made them (the agent's CreateProcess, WatchProcess, the
// agent's StartProcess; undone as removeProcessLegacy says), and
// remembers to do so for every later call.
func (c *Client) StartProcess(ctx context.Context, create *agentapi.CreateProcessRequest, logPath string) (time.Time, error) {
	if !c.legacy.Load() {
		r, err := c.shim.StartProcess(ctx, &shimapi.StartProcessRequest{Create: create, LogPath: logPath})
		if err == nil {
			return time.Unix(0, r.StartedUnixNano), nil
		}
		if !c.isLegacy(err, "StartProcess") {
			return time.Time{}, err
		}
	}
	return c.startProcessLegacy(ctx, create, logPath)
}

// RemoveProcess removes a process that exited (or never started) from
// the shim and from the guest; for a watched process, once its exit is
// recorded and its log complete. Removing an unknown or removed process
// is fine. A shim started by an older daemon gets the agent's
// RemoveProcess, WaitProcess and ForgetProcess instead
// (removeProcessLegacy).
func (c *Client) RemoveProcess(ctx context.Context, id *agentapi.ProcessID) error {
	if !c.legacy.Load() {
		_, err := c.shim.RemoveProcess(ctx, &shimapi.RemoveProcessRequest{ContainerId: id.GetContainerId(), ExecId: id.GetExecId()})
		if err == nil || !c.isLegacy(err, "RemoveProcess") {
			return err
		}
	}
	return c.removeProcessLegacy(ctx, id)
}

// isLegacy reports whether err is the Unimplemented of a shim that
// predates call (ttrpc answers it for a method the server does not
// have; the shim's own calls never do), and remembers it.
func (c *Client) isLegacy(err error, call string) bool {
	if !errdefs.IsNotImplemented(err) {
		return false
	}
	if !c.legacy.Swap(true) {
		slog.Info("the shim predates the shim's process calls: using the calls it has", "dir", c.dir, "shim_pid", c.pid, "call", call, "answer", err)
	}
	return true
}

// startProcessLegacy is StartProcess as daemons made it before the shim
// had its own: the agent's CreateProcess, WatchProcess, the agent's
// StartProcess; a failure after the create is undone by
// removeProcessLegacy.
func (c *Client) startProcessLegacy(ctx context.Context, create *agentapi.CreateProcessRequest, logPath string) (_ time.Time, retErr error) {
	id := create.GetId()
	if _, err := c.agent.CreateProcess(ctx, create); err != nil {
		return time.Time{}, fmt.Errorf("creating the process in the guest: %w", err)
	}
	defer func() {
		if retErr != nil {
			uctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), legacyUndoTimeout)
			defer cancel()
			if err := c.removeProcessLegacy(uctx, id); err != nil {
				slog.Warn("removing a process whose start failed", "dir", c.dir, "container", id.GetContainerId(), "exec", id.GetExecId(), "err", err)
			}
		}
	}()
	if _, err := c.shim.WatchProcess(ctx, &shimapi.WatchProcessRequest{ContainerId: id.GetContainerId(), ExecId: id.GetExecId(), LogPath: logPath}); err != nil {
		return time.Time{}, fmt.Errorf("watching the process: %w", err)
	}
	started := time.Now()
	if _, err := c.agent.StartProcess(ctx, &agentapi.StartProcessRequest{Id: id}); err != nil {
		return time.Time{}, fmt.Errorf("starting the process in the guest: %w", err)
	}
	return started, nil
}

// legacyUndoTimeout bounds the undo of a failed start on an old shim;
// legacyRecordWait how long removeProcessLegacy waits for an exit record.
var (
	legacyUndoTimeout = 10 * time.Second
	legacyRecordWait  = 5 * time.Second
)

// removeProcessLegacy is RemoveProcess with the calls of a shim that
// predates it. Older daemons forgot the process first, then removed it
// from the guest; that order races with the shim recording an exit that
// is just happening (its exit file can be written after it was
// forgotten). So: the agent's RemoveProcess first (the shim's forwarder
// waits for the exit record of a watched process that exited, and
// records one for a process that never ran), then WaitProcess until that
// record is written, then ForgetProcess, which drops it and its file.
func (c *Client) removeProcessLegacy(ctx context.Context, id *agentapi.ProcessID) error {
	var errs []error
	_, err := c.agent.RemoveProcess(ctx, &agentapi.RemoveProcessRequest{Id: id})
	if err != nil && !errdefs.IsNotFound(err) {
		// Still running, or no agent: nothing will be recorded soon.
		errs = append(errs, fmt.Errorf("removing the process from the guest: %w", err))
	} else {
		wctx, cancel := context.WithTimeout(ctx, legacyRecordWait)
		_, err := c.shim.WaitProcess(wctx, &shimapi.WaitProcessRequest{ContainerId: id.GetContainerId(), ExecId: id.GetExecId()})
		cancel()
		if err != nil && !errdefs.IsNotFound(err) { // NotFound: not watched
			slog.Debug("waiting for the exit record of a removed process", "dir", c.dir, "container", id.GetContainerId(), "exec", id.GetExecId(), "err", err)
		}
	}
	if _, err := c.shim.ForgetProcess(ctx, &shimapi.ForgetProcessRequest{ContainerId: id.GetContainerId(), ExecId: id.GetExecId()}); err != nil {
		errs = append(errs, fmt.Errorf("forgetting the process: %w", err))
	}
	return errors.Join(errs...)
}

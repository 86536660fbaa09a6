package shim

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/containerd/errdefs"
	"github.com/containerd/errdefs/pkg/errgrpc"
	clog "github.com/containerd/log"
	"github.com/containerd/ttrpc"
	"github.com/sirupsen/logrus"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/macvz/macvz/internal/atomicfile"
	"github.com/macvz/macvz/internal/guard"
	"github.com/macvz/macvz/runtime/agentapi"
	"github.com/macvz/macvz/runtime/boundedlog"
	"github.com/macvz/macvz/runtime/shimapi"
	"github.com/macvz/macvz/runtime/vm"
)

// Version is the shim's version in State (set by the command).
var Version = "dev"

// Timing of the shim.
var (
	// defaultAgentTimeout bounds Start's wait for the agent when neither
	// the request nor its deadline say.
	defaultAgentTimeout = 2 * time.Minute
	// signalStopGrace is the VM's grace period when SIGTERM or SIGINT
	// ends the shim.
	signalStopGrace = 10 * time.Second
	// shutdownWait bounds how long Shutdown waits for calls in flight.
	shutdownWait = 2 * time.Second
)

// RunOptions are the `macvz shim` command's options.
type RunOptions struct {
	// Dir is the sandbox state directory (required).
	Dir string
	// LogLevel overrides shim.json's log level.
	LogLevel string
}

// server is a running shim.
type server struct {
	id, dir, backend string
	log              *slog.Logger
	m                vm.Machine
	agent            *agentConn
	procs            *procTable
	started          time.Time
	cancel           context.CancelFunc

	mu          sync.Mutex
	starting    bool
	vmStarted   time.Time
	agentReady  time.Time
	askedAgent  bool // Stop asked the agent to power off
	shutdown    chan struct{}
	shutdownOne sync.Once
}

// Run is the shim: it runs the VM of opts.Dir until Shutdown (or SIGTERM,
// SIGINT), serving the shim API on <dir>/shim.sock. It returns nil after
// a Shutdown, an error when the shim cannot start.
func Run(ctx context.Context, opts RunOptions) error {
	if opts.Dir == "" {
		return errors.New("--dir is required")
	}
	dir, err := filepath.Abs(opts.Dir)
	if err != nil {
		return err
	}
	var cfg Config
	if err := readJSON(filepath.Join(dir, ConfigFile), &cfg); err != nil {
		return err
	}
	var spec vm.Spec
	if err := readJSON(filepath.Join(dir, SpecFile), &spec); err != nil {
		return err
	}
	if spec.Dir == "" {
		spec.Dir = dir
	}
	level := cfg.LogLevel
	if opts.LogLevel != "" {
		level = opts.LogLevel
	}
	log, closeLog, err := openShimLog(dir, spec.ID, level)
	if err != nil {
		return err
	}
	defer closeLog()

	err = run(ctx, log, dir, cfg, &spec)
	if err != nil {
		log.Error("shim failed", "err", err)
	}
	return err
}

// openShimLog opens <dir>/shim.log for slog and for the logrus logger of
// containerd's libraries (ttrpc), both stamping the sandbox id.
// ttrpcLogBurst is how many lines the ttrpc library may log a minute.
const ttrpcLogBurst = 50

func openShimLog(dir, id, level string) (*slog.Logger, func(), error) {
	var lv slog.Level
	if level != "" {
		if err := lv.UnmarshalText([]byte(level)); err != nil {
			return nil, nil, fmt.Errorf("log level %q: %w", level, err)
		}
	}
	// Bounded: what the shim logs about a guest is partly the guest's
	// doing.
	f, err := boundedlog.Open(filepath.Join(dir, LogFile), boundedlog.DefaultLimit)
	if err != nil {
		return nil, nil, err
	}
	log := slog.New(slog.NewTextHandler(f, &slog.HandlerOptions{Level: lv})).With("sandbox", id)
	slog.SetDefault(log)
	lr := logrus.New()
	// ttrpc logs what the guest sends on unknown streams: a few lines a
	// minute are kept (see lineLimiter).
	lr.SetOutput(newLineLimiter(f, ttrpcLogBurst, time.Minute))
	lr.SetFormatter(&logrus.TextFormatter{DisableColors: true, FullTimestamp: true, TimestampFormat: time.RFC3339Nano})
	clog.L = logrus.NewEntry(lr).WithField("sandbox", id)
	return log, func() { f.Close() }, nil
}

func run(ctx context.Context, log *slog.Logger, dir string, cfg Config, spec *vm.Spec) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	sock := filepath.Join(dir, SocketFile)
	pidFile := filepath.Join(dir, PIDFile)

	// Refuse to run twice for one directory.
	if c, err := dialSocket(ctx, sock); err == nil {
		c.Close()
		return fmt.Errorf("%w: a shim already serves %s", errdefs.ErrAlreadyExists, sock)
	}

	b, err := lookupBackend(cfg.Backend)
	if err != nil {
		return err
	}
	d, err := b.New()
	if err != nil {
		return fmt.Errorf("backend %s: %w", cfg.Backend, err)
	}
	if err := d.Validate(spec); err != nil {
		return err
	}
	m, err := d.Create(ctx, spec)
	if err != nil {
		return err
	}

	s := &server{
		id:       spec.ID,
		dir:      dir,
		backend:  cfg.Backend,
		log:      log,
		m:        m,
		started:  time.Now(),
		cancel:   cancel,
		shutdown: make(chan struct{}),
	}
	s.agent = newAgentConn(ctx, log, m, b.LinkFraming)
	s.procs = newProcTable(ctx, log, filepath.Join(dir, ExitsDir), s.agent)
	s.procs.load()

	srv, err := ttrpc.NewServer(append(serverOptions(), ttrpc.WithUnaryServerInterceptor(errorInterceptor))...)
	if err != nil {
		return err
	}
	registerShim(srv, s)
	agentapi.RegisterAgentService(srv, &forwarder{s: s})

	os.Remove(sock)
	l, err := listenSocket(sock)
	if err != nil {
		return err
	}
	if err := atomicfile.WriteFile(pidFile, []byte(strconv.Itoa(os.Getpid())+"\n"), 0o600); err != nil {
		l.Close()
		os.Remove(sock)
		return err
	}
	cleanup := func() {
		os.Remove(sock)
		// Only our own pid file.
		if b, err := os.ReadFile(pidFile); err == nil && strings.TrimSpace(string(b)) == strconv.Itoa(os.Getpid()) {
			os.Remove(pidFile)
		}
	}

	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)
	signal.Ignore(syscall.SIGHUP, syscall.SIGPIPE)
	defer signal.Stop(sigs)

	served := make(chan error, 1)
	// Connections must outlive ctx a little: Shutdown's answer is sent
	// after the shim decided to exit.
	go func() { served <- srv.Serve(context.WithoutCancel(ctx), l) }()
	log.Info("shim serving", "socket", sock, "pid", os.Getpid(), "backend", cfg.Backend, "version", Version)

	go func() {
		<-m.Done()
		e := m.Exit()
		log.Info("VM stopped", "reason", e.Reason, "clean", e.Clean)
	}()

	select {
	case sig := <-sigs:
		log.Info("signal: stopping the VM and exiting", "signal", sig.String())
		sctx, scancel := context.WithTimeout(context.Background(), signalStopGrace+30*time.Second)
		s.stop(sctx, signalStopGrace)
		scancel()
	case <-s.shutdown:
	case err := <-served:
		log.Error("serving failed", "err", err)
	case <-ctx.Done():
	}

	// No new connections; let calls in flight (Shutdown's answer) finish.
	os.Remove(sock)
	sctx, scancel := context.WithTimeout(context.Background(), shutdownWait)
	srv.Shutdown(sctx)
	scancel()
	srv.Close()
	cancel() // ends watchers, forwarded streams, the agent connection
	if s.m.State() != vm.StateStopped {
		s.m.Stop(context.Background(), 0)
	}
	cleanup()
	log.Info("shim exiting")
	return nil
}

// registerShim registers the Shim service; tests replace it to play a
// shim of an older version (one without the calls added since).
var registerShim = shimapi.RegisterShimService

// errorInterceptor turns errdefs errors into gRPC statuses. A panic in a call (answers from the guest pass through most of them)
// ends that call with Internal, not the shim (ttrpc does not recover).
func errorInterceptor(ctx context.Context, unmarshal ttrpc.Unmarshaler, info *ttrpc.UnaryServerInfo, method ttrpc.Method) (resp any, err error) {
	defer func() {
		if err != nil {
			if _, ok := status.FromError(err); !ok {
				err = errgrpc.ToGRPC(err)
			}
		}
	}()
	defer guard.Recover(nil, "call "+info.FullMethod, &err)
	return method(ctx, unmarshal)
}

// ---- the Shim service ----

var _ shimapi.ShimService = (*server)(nil)

func vmState(st vm.State) shimapi.VMState {
	switch st {
	case vm.StateCreated:
		return shimapi.VMState_VM_CREATED
	case vm.StateRunning:
		return shimapi.VMState_VM_RUNNING
	case vm.StateStopped:
		return shimapi.VMState_VM_STOPPED
	}
	return shimapi.VMState_VM_STATE_UNSPECIFIED
}

func (s *server) vmExit() *shimapi.VMExit {
	if s.m.State() != vm.StateStopped {
		return nil
	}
	e := s.m.Exit()
	x := &shimapi.VMExit{Reason: e.Reason, Clean: e.Clean}
	if !e.At.IsZero() {
		x.AtUnixNano = e.At.UnixNano()
	}
	return x
}

func unixNano(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixNano()
}

func (s *server) Start(ctx context.Context, req *shimapi.StartRequest) (*shimapi.StartResponse, error) {
	s.mu.Lock()
	if s.starting || s.m.State() != vm.StateCreated {
		st := s.m.State()
		s.mu.Unlock()
		if s.starting {
			return nil, status.Error(codes.FailedPrecondition, "the VM is starting")
		}
		return nil, status.Errorf(codes.FailedPrecondition, "the VM is %s; a VM starts once", st)
	}
	s.starting = true
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		s.starting = false
		s.mu.Unlock()
	}()

	t0 := time.Now()
	s.log.Info("starting the VM")
	if err := s.m.Start(ctx); err != nil {
		s.log.Error("starting the VM failed", "err", err)
		return nil, err
	}
	vmStart := time.Since(t0)
	s.mu.Lock()
	s.vmStarted = time.Now()
	s.mu.Unlock()

	if req.NoAgent {
		// Nothing will answer: every agent call says so at once instead
		// of waiting for a connection that never comes.
		s.agent.drop(ErrNoAgent)
		s.log.Info("VM started without an agent", "vm_start", vmStart)
		return &shimapi.StartResponse{BootNs: int64(vmStart), VmStartNs: int64(vmStart)}, nil
	}

	actx := ctx
	timeout := time.Duration(req.AgentTimeoutNs)
	if timeout <= 0 {
		if _, ok := ctx.Deadline(); !ok {
			timeout = defaultAgentTimeout
		}
	}
	if timeout > 0 {
		// From the call, not from here: the VM's start counts, so a
		// caller that sized the timeout to its own deadline gets this
		// answer (why the agent is silent) before that deadline.
		var cancel context.CancelFunc
		actx, cancel = context.WithDeadline(ctx, t0.Add(timeout))
		defer cancel()
	}
	sess, err := s.agent.get(actx)
	if err != nil {
		s.log.Error("the agent did not answer", "err", err, "after", time.Since(t0))
		return nil, s.withConsole(err)
	}
	// The answer is the boot's record (its phases, the kernel): the
	// guest's interfaces are learned later, by whoever needs them.
	info, err := sess.api.Info(actx, &agentapi.InfoRequest{SkipInterfaces: true})
	if err != nil {
		// A guest can answer the handshake and then nothing: say it is
		// the agent that failed, with the console's end.
		st := status.Convert(agentErr(err))
		s.log.Error("the agent connected but did not answer", "err", err, "after", time.Since(t0))
		return nil, s.withConsole(status.Errorf(st.Code(), "the guest agent connected but does not answer: %s", st.Message()))
	}
	boot := time.Since(t0)
	s.mu.Lock()
	if s.agentReady.IsZero() {
		s.agentReady = time.Now()
	}
	s.mu.Unlock()
	resp := &shimapi.StartResponse{Agent: info, BootNs: int64(boot), VmStartNs: int64(vmStart)}
	if cm, ok := s.m.(vm.ConsoleMarker); ok {
		// bootPhases checks it against the boot (a guest writes the
		// console): here only that it came during this call.
		if at := cm.AgentLineAt(); at.After(t0) {
			resp.AgentLineNs = int64(at.Sub(t0))
		}
	}
	s.log.Info("VM started; the agent answers", "vm_start", vmStart, "boot", boot, "agent", info.AgentVersion, "kernel", info.KernelRelease)
	return resp, nil
}

// withConsole adds the end of the guest's console log to an error.
func (s *server) withConsole(err error) error {
	st, _ := status.FromError(err)
	msg := st.Message()
	if tail := s.consoleTail(); tail != "" {
		msg += "; guest console ends with:\n" + tail
	}
	return status.Error(st.Code(), msg)
}

func (s *server) consoleTail() string {
	var path string
	if sp, ok := s.spec(); ok {
		path = sp.ConsoleLog
	}
	if path == "" {
		return ""
	}
	// The console is the guest's: only valid UTF-8 goes into a status.
	return strings.ToValidUTF8(fileTail(path, 2048, 15), "\uFFFD")
}

func (s *server) spec() (*vm.Spec, bool) {
	var sp vm.Spec
	if err := readJSON(filepath.Join(s.dir, SpecFile), &sp); err != nil {
		return nil, false
	}
	return &sp, true
}

// fileTail is the last lines (at most max bytes) of a file.
func fileTail(path string, limit int64, lines int) string {
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return ""
	}
	off := max(st.Size()-limit, 0)
	b := make([]byte, st.Size()-off)
	n, _ := f.ReadAt(b, off)
	ls := strings.Split(strings.TrimRight(string(b[:n]), "\n"), "\n")
	if off > 0 && len(ls) > 1 {
		ls = ls[1:] // cut mid-line
	}
	if len(ls) > lines {
		ls = ls[len(ls)-lines:]
	}
	return strings.Join(ls, "\n")
}

func (s *server) State(ctx context.Context, _ *shimapi.StateRequest) (*shimapi.StateResponse, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return &shimapi.StateResponse{
		Id:                  s.id,
		Backend:             s.backend,
		State:               vmState(s.m.State()),
		Exit:                s.vmExit(),
		AgentConnected:      s.agent.connected(),
		ShimPid:             uint32(os.Getpid()),
		ShimStartedUnixNano: unixNano(s.started),
		VmStartedUnixNano:   unixNano(s.vmStarted),
		AgentReadyUnixNano:  unixNano(s.agentReady),
		ShimVersion:         Version,
	}, nil
}

func (s *server) Stop(ctx context.Context, req *shimapi.StopRequest) (*shimapi.StopResponse, error) {
	if req.GraceNs < 0 {
		return nil, status.Errorf(codes.InvalidArgument, "grace_ns %d is negative", req.GraceNs)
	}
	if err := s.stop(ctx, time.Duration(req.GraceNs)); err != nil {
		return nil, err
	}
	return &shimapi.StopResponse{Exit: s.vmExit()}, nil
}

// stop asks the agent to power off (once), then stops the machine.
func (s *server) stop(ctx context.Context, grace time.Duration) error {
	if s.m.State() == vm.StateStopped {
		return nil
	}
	s.mu.Lock()
	ask := !s.askedAgent && grace > 0
	s.askedAgent = s.askedAgent || ask
	s.mu.Unlock()
	if sess := s.agent.current(); ask && sess != nil && s.m.State() == vm.StateRunning {
		// The agent terminates its processes (SIGTERM, then SIGKILL after
		// its grace), syncs and powers off; keep a little of our grace
		// for the last two.
		agrace := max(grace-time.Second, grace/2)
		actx, cancel := context.WithTimeout(ctx, min(grace, 5*time.Second))
		_, err := sess.api.Shutdown(actx, &agentapi.ShutdownRequest{GracePeriodMs: uint32(agrace / time.Millisecond)})
		cancel()
		if err != nil {
			s.log.Warn("asking the agent to power off", "err", err)
		} else {
			s.log.Info("asked the agent to power off", "grace", agrace)
		}
	}
	s.log.Info("stopping the VM", "grace", grace)
	if err := s.m.Stop(ctx, grace); err != nil {
		return err
	}
	select {
	case <-s.m.Done():
	case <-ctx.Done():
		return ctx.Err()
	}
	return nil
}

func (s *server) Stats(ctx context.Context, _ *shimapi.StatsRequest) (*shimapi.StatsResponse, error) {
	if st := s.m.State(); st != vm.StateRunning {
		return nil, status.Errorf(codes.FailedPrecondition, "the VM is %s", st)
	}
	st, err := s.m.Stats(ctx)
	if err != nil {
		return nil, err
	}
	return &shimapi.StatsResponse{TimestampUnixNano: time.Now().UnixNano(), CpuNanos: st.CPUNanos, MemoryBytes: st.MemoryBytes}, nil
}

func (s *server) Save(ctx context.Context, req *shimapi.SaveRequest) (*shimapi.SaveResponse, error) {
	if req.Path == "" || !filepath.IsAbs(req.Path) {
		return nil, status.Errorf(codes.InvalidArgument, "path %q is not absolute", req.Path)
	}
	if st := s.m.State(); st != vm.StateRunning {
		return nil, status.Errorf(codes.FailedPrecondition, "the VM is %s", st)
	}
	// A paused guest answers nothing: no agent connection from here on.
	s.agent.drop(errors.New("the VM is paused (saved); stop it"))
	save := s.m.Save
	if rs, ok := s.m.(vm.RAMFileSaver); ok && req.RamFile {
		save = rs.SaveRAMFile
	}
	if err := save(ctx, req.Path); err != nil {
		// A driver leaves a VM it could not save running, or tries to:
		// make sure it runs, then let the agent be reached again. One
		// that cannot run on is unusable, and every agent call says so.
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), undoTimeout)
		rerr := s.m.Resume(rctx)
		cancel()
		if rerr != nil {
			why := fmt.Sprintf("saving the VM state failed (%v) and resuming the VM failed too (%v): the VM is paused and unusable; stop it", err, rerr)
			s.agent.drop(errors.New(why))
			s.log.Error("the VM cannot run on after a failed save", "err", err, "resumeErr", rerr)
			return nil, status.Error(codes.Internal, why)
		}
		s.agent.resume()
		s.log.Warn("saving the VM state failed; the VM runs on", "err", err)
		return nil, err
	}
	s.log.Info("VM state saved", "path", req.Path)
	return &shimapi.SaveResponse{}, nil
}

func (s *server) SetMemory(ctx context.Context, req *shimapi.SetMemoryRequest) (*shimapi.SetMemoryResponse, error) {
	b, ok := s.m.(vm.Balloon)
	if !ok {
		return nil, status.Errorf(codes.FailedPrecondition, "this VM backend cannot change a running VM's memory")
	}
	if st := s.m.State(); st != vm.StateRunning {
		return nil, status.Errorf(codes.FailedPrecondition, "the VM is %s", st)
	}
	if err := b.SetMemoryTarget(ctx, req.TargetBytes); err != nil {
		return nil, err
	}
	s.log.Info("VM memory target set", "bytes", req.TargetBytes)
	return &shimapi.SetMemoryResponse{}, nil
}

func (s *server) Resume(ctx context.Context, _ *shimapi.ResumeRequest) (*shimapi.ResumeResponse, error) {
	if st := s.m.State(); st != vm.StateRunning {
		return nil, status.Errorf(codes.FailedPrecondition, "the VM is %s", st)
	}
	if err := s.m.Resume(ctx); err != nil {
		return nil, err
	}
	s.agent.resume()
	s.log.Info("VM resumed")
	return &shimapi.ResumeResponse{}, nil
}

func (s *server) Shutdown(ctx context.Context, _ *shimapi.ShutdownRequest) (*shimapi.ShutdownResponse, error) {
	if s.m.State() != vm.StateStopped {
		s.log.Info("shutdown: stopping the VM hard")
		if err := s.m.Stop(ctx, 0); err != nil {
			return nil, err
		}
	}
	s.shutdownOne.Do(func() {
		s.log.Info("shutdown requested")
		close(s.shutdown)
	})
	return &shimapi.ShutdownResponse{}, nil
}

func (s *server) WatchProcess(ctx context.Context, req *shimapi.WatchProcessRequest) (*shimapi.WatchProcessResponse, error) {
	k, err := keyOf(req.ContainerId, req.ExecId)
	if err != nil {
		return nil, err
	}
	if err := checkLogPath(req.LogPath); err != nil {
		return nil, err
	}
	if s.procs.lookup(k) == nil {
		if err := s.procs.inGuest(ctx, k); err != nil {
			return nil, err
		}
	}
	if err := s.procs.watch(ctx, k, req.LogPath); err != nil {
		return nil, err
	}
	return &shimapi.WatchProcessResponse{}, nil
}

func (s *server) watched(container, exec string) (*watched, error) {
	k, err := keyOf(container, exec)
	if err != nil {
		return nil, err
	}
	w := s.procs.lookup(k)
	if w == nil {
		return nil, status.Errorf(codes.NotFound, "process %s is not watched", k)
	}
	return w, nil
}

func (s *server) ProcessStatus(ctx context.Context, req *shimapi.ProcessStatusRequest) (*shimapi.ProcessStatusResponse, error) {
	w, err := s.watched(req.ContainerId, req.ExecId)
	if err != nil {
		return nil, err
	}
	return w.status(), nil
}

func (s *server) WaitProcess(ctx context.Context, req *shimapi.WaitProcessRequest) (*shimapi.WaitProcessResponse, error) {
	w, err := s.watched(req.ContainerId, req.ExecId)
	if err != nil {
		return nil, err
	}
	select {
	case <-w.done:
	case <-ctx.Done():
		return nil, agentErr(ctx.Err())
	}
	r := w.exited()
	if r == nil {
		return nil, status.Errorf(codes.NotFound, "process %s is not watched any more", w.key)
	}
	return &shimapi.WaitProcessResponse{Exit: r.Exit()}, nil
}

func (s *server) ReopenLog(ctx context.Context, req *shimapi.ReopenLogRequest) (*shimapi.ReopenLogResponse, error) {
	w, err := s.watched(req.ContainerId, req.ExecId)
	if err != nil {
		return nil, err
	}
	if w.clog == nil {
		return nil, status.Errorf(codes.FailedPrecondition, "process %s has no log being written", w.key)
	}
	if err := w.clog.reopen(); err != nil {
		if errors.Is(err, errLogNotRegular) {
			return nil, status.Errorf(codes.FailedPrecondition, "reopening the container log: %v", err)
		}
		return nil, status.Errorf(codes.Internal, "reopening %s: %v", w.logPath, err)
	}
	w.log.Info("container log reopened", "path", w.logPath)
	return &shimapi.ReopenLogResponse{}, nil
}

func (s *server) ListProcesses(ctx context.Context, _ *shimapi.ListProcessesRequest) (*shimapi.ListProcessesResponse, error) {
	r := &shimapi.ListProcessesResponse{}
	for _, w := range s.procs.list() {
		r.Processes = append(r.Processes, w.status())
	}
	return r, nil
}

func (s *server) ForgetProcess(ctx context.Context, req *shimapi.ForgetProcessRequest) (*shimapi.ForgetProcessResponse, error) {
	k, err := keyOf(req.ContainerId, req.ExecId)
	if err != nil {
		return nil, err
	}
	s.procs.forget(k)
	return &shimapi.ForgetProcessResponse{}, nil
}

// undoTimeout bounds the removal of a process whose StartProcess failed
// (the caller's context may be what ended it).
var undoTimeout = 10 * time.Second

// stepErr is err (an agent's status or a shim error) with what the shim
// was doing in front of its message; the code is kept, except
// Unimplemented: the shim's process calls answer that only when the shim
// predates them (Client falls back on it), never for the guest.
func stepErr(what string, err error) error {
	st, ok := status.FromError(agentErr(err))
	if !ok {
		return err
	}
	code := st.Code()
	if code == codes.Unimplemented {
		code = codes.FailedPrecondition
	}
	return status.Error(code, what+": "+st.Message())
}

func (s *server) StartProcess(ctx context.Context, req *shimapi.StartProcessRequest) (_ *shimapi.StartProcessResponse, retErr error) {
	creq := req.GetCreate()
	if creq == nil {
		return nil, status.Error(codes.InvalidArgument, "create is missing")
	}
	k, err := keyOf(creq.GetId().GetContainerId(), creq.GetId().GetExecId())
	if err != nil {
		return nil, err
	}
	// What watch would refuse, refused before anything is created.
	if err := checkLogPath(req.LogPath); err != nil {
		return nil, err
	}
	sess, err := s.agent.get(ctx)
	if err != nil {
		return nil, err
	}
	if _, err := sess.api.CreateProcess(ctx, creq); err != nil {
		// Nothing was created (AlreadyExists: not ours to undo).
		return nil, stepErr("creating the process in the guest", err)
	}
	defer func() {
		if retErr != nil {
			uctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), undoTimeout)
			defer cancel()
			if err := s.removeProcess(uctx, k); err != nil {
				s.log.Warn("removing a process whose start failed", "container", k.container, "exec", k.exec, "err", err)
			}
		}
	}()
	if err := s.procs.watch(ctx, k, req.LogPath); err != nil {
		return nil, stepErr("watching the process", err)
	}
	// The agent connection may have been made again meanwhile.
	if sess, err = s.agent.get(ctx); err != nil {
		return nil, err
	}
	started := time.Now()
	r, err := sess.api.StartProcess(ctx, &agentapi.StartProcessRequest{Id: k.id()})
	if err != nil {
		return nil, stepErr("starting the process in the guest", err)
	}
	s.log.Info("process started", "container", k.container, "exec", k.exec, "pid", r.Pid)
	return &shimapi.StartProcessResponse{StartedUnixNano: started.UnixNano(), Pid: r.Pid}, nil
}

func (s *server) RemoveProcess(ctx context.Context, req *shimapi.RemoveProcessRequest) (*shimapi.RemoveProcessResponse, error) {
	k, err := keyOf(req.ContainerId, req.ExecId)
	if err != nil {
		return nil, err
	}
	if err := s.removeProcess(ctx, k); err != nil {
		return nil, err
	}
	return &shimapi.RemoveProcessResponse{}, nil
}

// removeProcess waits for the exit record of a watched process that has
// exited (so its log is complete), forgets it, and removes it from the
// guest. A process the guest does not have, or a VM that does not run,
// leaves nothing to remove there.
func (s *server) removeProcess(ctx context.Context, k procKey) error {
	if w := s.procs.lookup(k); w != nil {
		// An exit being recorded (w.exit is set before its file is
		// written) or about to be: wait for it, or the exit file could
		// be written after forget removed it. Whether the guest says it
		// exited; without an answer, do not wait (the agent call below
		// says what is wrong).
		wait := w.exited() != nil
		if !wait {
			if sess, err := s.agent.get(ctx); err == nil {
				if list, err := sess.api.ListProcesses(ctx, &agentapi.ListProcessesRequest{ContainerId: k.container}); err == nil {
					for _, p := range list.Processes {
						if p.Id.GetContainerId() == k.container && p.Id.GetExecId() == k.exec && p.State == agentapi.ProcessState_EXITED {
							wait = true
						}
					}
				}
			}
		}
		if wait {
			select {
			case <-w.done:
			case <-ctx.Done():
				return agentErr(ctx.Err())
			}
		}
	}
	s.procs.forget(k)
	if st := s.m.State(); st == vm.StateCreated || st == vm.StateStopped {
		return nil // no guest, no processes
	}
	sess, err := s.agent.get(ctx)
	if err != nil {
		return stepErr("removing the process from the guest", err)
	}
	if _, err := sess.api.RemoveProcess(ctx, &agentapi.RemoveProcessRequest{Id: k.id()}); err != nil && status.Code(err) != codes.NotFound {
		return stepErr("removing the process from the guest", err)
	}
	s.log.Debug("process removed", "container", k.container, "exec", k.exec)
	return nil
}

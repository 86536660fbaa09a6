package agent

import (
	"context"
	"errors"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"time"

	"google.golang.org/grpc/codes"

	api "github.com/macvz/macvz/runtime/agentapi"
)

type procKey struct{ container, exec string }

func keyOf(id *api.ProcessID) (procKey, error) {
	if id == nil || id.ContainerId == "" {
		return procKey{}, errf(codes.InvalidArgument, "a process needs a container_id")
	}
	return procKey{id.ContainerId, id.ExecId}, nil
}

func (k procKey) String() string {
	if k.exec == "" {
		return k.container
	}
	return k.container + "/" + k.exec
}

// process is one process the host asked for.
type process struct {
	key procKey
	req *api.CreateProcessRequest
	cmd *exec.Cmd

	mu      sync.Mutex
	state   api.ProcessState
	pid     int
	started time.Time
	// stdin is the write end of the stdin pipe, or the pty master when
	// tty; nil once closed or when the process has no stdin.
	stdin    *os.File
	stdinMu  sync.Mutex // serializes writes
	pty      *os.File   // the master, when tty
	child    []*os.File // the child's ends, closed after start
	readers  []io.ReadCloser
	out      [2]*outBuf // stdout, stderr
	exited   chan struct{}
	exit     *api.ExitStatus
	released bool
	// seccomp is the compiled filter (Linux guests), nil when unconfined;
	// cgroup the container's cgroup directory the process runs in.
	seccomp *compiledSeccomp
	cgroup  string
}

func (a *agent) lookup(id *api.ProcessID) (*process, error) {
	k, err := keyOf(id)
	if err != nil {
		return nil, err
	}
	a.mu.Lock()
	p := a.procs[k]
	a.mu.Unlock()
	if p == nil {
		return nil, errf(codes.NotFound, "no process %s", k)
	}
	return p, nil
}

// lookPath finds argv0 in the PATH of env, as the process will see it.
func lookPath(argv0 string, env []string) (string, error) {
	if strings.Contains(argv0, "/") {
		return argv0, nil
	}
	path := "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
	for _, e := range env {
		if v, ok := strings.CutPrefix(e, "PATH="); ok {
			path = v
		}
	}
	for _, dir := range filepath.SplitList(path) {
		if dir == "" {
			dir = "."
		}
		p := filepath.Join(dir, argv0)
		if st, err := os.Stat(p); err == nil && st.Mode().IsRegular() && st.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	return "", &fs.PathError{Op: "exec", Path: argv0, Err: fs.ErrNotExist}
}

func (a *agent) CreateProcess(ctx context.Context, req *api.CreateProcessRequest) (*api.CreateProcessResponse, error) {
	k, err := keyOf(req.Id)
	if err != nil {
		return nil, err
	}
	if len(req.Argv) == 0 || req.Argv[0] == "" {
		return nil, errf(codes.InvalidArgument, "process %s: empty argv", k)
	}
	for _, e := range req.Env {
		if !strings.Contains(e, "=") {
			return nil, errf(codes.InvalidArgument, "process %s: environment entry %q is not KEY=VALUE", k, e)
		}
	}
	if err := resolveUser(a.cfg.etcDir, req); err != nil {
		return nil, err
	}
	if req.CpuQuotaUs < 0 || req.CpuPeriodUs < 0 || (req.CpuQuotaUs > 0 && (req.CpuQuotaUs < 1000 || req.CpuPeriodUs > 1_000_000 || (req.CpuPeriodUs > 0 && req.CpuPeriodUs < 1000))) {
		return nil, errf(codes.InvalidArgument, "process %s: CPU quota %d / period %d µs is not a CFS quota (quota ≥ 1000, period 1000..1000000)", k, req.CpuQuotaUs, req.CpuPeriodUs)
	}
	if req.MemoryLimitBytes < 0 {
		return nil, errf(codes.InvalidArgument, "process %s: negative memory limit %d", k, req.MemoryLimitBytes)
	}
	filter, err := seccompOf(req)
	if err != nil {
		return nil, errf(codes.InvalidArgument, "process %s: %v", k, err)
	}
	if req.Id.ExecId == "" && req.Cwd != "" {
		// A container's working directory need not exist in the image
		// (kubelet's workingDir): runc creates it, root-owned 0755, and
		// so does the agent. An exec's is not created, as with runc.
		if err := os.MkdirAll(req.Cwd, 0o755); err != nil {
			return nil, osErr(codes.FailedPrecondition, err, "process %s: creating its working directory", k)
		}
	}
	p := &process{
		key:     k,
		req:     req,
		state:   api.ProcessState_CREATED,
		exited:  make(chan struct{}),
		seccomp: filter,
	}
	a.mu.Lock()
	if a.procs[k] != nil {
		a.mu.Unlock()
		return nil, errf(codes.AlreadyExists, "process %s already exists", k)
	}
	a.procs[k] = p // reserved; removed again on failure
	a.mu.Unlock()
	if err := p.setup(); err != nil {
		p.release()
		a.mu.Lock()
		delete(a.procs, k)
		a.mu.Unlock()
		return nil, osErr(codes.Internal, err, "process %s: setting up stdio", k)
	}
	return &api.CreateProcessResponse{}, nil
}

// setup prepares the command and its stdio.
func (p *process) setup() error {
	req := p.req
	cwd := req.Cwd
	if cwd == "" {
		cwd = "/"
	}
	env := req.Env
	if env == nil {
		env = []string{}
	}
	cmd := &exec.Cmd{
		Path: req.Argv[0],
		Args: req.Argv,
		Env:  env,
		Dir:  cwd,
	}
	attr := &syscall.SysProcAttr{Setsid: true}
	if os.Getuid() == 0 || int(req.Uid) != os.Getuid() || int(req.Gid) != os.Getgid() || len(req.AdditionalGids) > 0 {
		groups, err := credentialGroups(req.Gid, req.AdditionalGids)
		if err != nil {
			return err
		}
		attr.Credential = &syscall.Credential{Uid: req.Uid, Gid: req.Gid, Groups: groups}
		if attr.Credential.Groups == nil {
			attr.Credential.Groups = []uint32{}
		}
	}
	limit := int(req.OutputBufferBytes)
	p.out[0] = newOutBuf(limit)
	if req.Tty {
		master, slave, err := openPty()
		if err != nil {
			return err
		}
		p.pty = master
		p.child = append(p.child, slave)
		if sz := req.TerminalSize; sz != nil && sz.Rows > 0 && sz.Cols > 0 {
			if err := setWinsize(master, sz.Rows, sz.Cols); err != nil {
				return err
			}
		}
		cmd.Stdin, cmd.Stdout, cmd.Stderr = slave, slave, slave
		attr.Setctty = true
		attr.Ctty = 0
		if req.Stdin {
			p.stdin = master
		}
		p.readers = append(p.readers, master)
		p.out[1] = closedOutBuf()
	} else {
		p.out[1] = newOutBuf(limit)
		for i := range 2 {
			r, w, err := os.Pipe()
			if err != nil {
				return err
			}
			p.readers = append(p.readers, r)
			p.child = append(p.child, w)
			if i == 0 {
				cmd.Stdout = w
			} else {
				cmd.Stderr = w
			}
		}
		if req.Stdin {
			r, w, err := os.Pipe()
			if err != nil {
				return err
			}
			p.child = append(p.child, r)
			p.stdin = w
			cmd.Stdin = r
		}
	}
	cmd.SysProcAttr = attr
	p.cmd = cmd
	return nil
}

// release closes every file the process holds (not started, or removed).
func (p *process) release() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.released {
		return
	}
	p.released = true
	for _, f := range p.child {
		f.Close()
	}
	p.child = nil
	if p.state == api.ProcessState_CREATED {
		for _, r := range p.readers {
			r.Close()
		}
		for _, b := range p.out {
			if b != nil {
				b.finish()
			}
		}
	}
	if p.stdin != nil && p.stdin != p.pty {
		p.stdin.Close()
	}
	p.stdin = nil
	if p.cmd != nil && p.cmd.Process != nil {
		p.cmd.Process.Release()
	}
}

// exitCodeForStartError follows the shell: 127 not found, 126 not runnable.
func exitCodeForStartError(err error) int32 {
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return 127
	case errors.Is(err, fs.ErrPermission), errors.Is(err, syscall.ENOEXEC):
		return 126
	}
	return 1
}

func (a *agent) StartProcess(ctx context.Context, req *api.StartProcessRequest) (*api.StartProcessResponse, error) {
	p, err := a.lookup(req.Id)
	if err != nil {
		return nil, err
	}
	// A process may use any of the VM's devices, whose drivers are the
	// early modules: wait for them, which the setup calls do not. What
	// it may ask the kernel for (the bridge, overlay, fuse) loads on the
	// request, through the agent as modprobe helper.
	if err := a.mods.needEarly(ctx); err != nil {
		return nil, errf(codes.DeadlineExceeded, "process %s: the guest's kernel modules are still loading", p.key)
	}
	// An exec runs where its container's main process runs: its mount
	// and PID namespaces, its cgroup, its seccomp filter. Looked up
	// before p.mu is taken: the table lock is never taken under it.
	var (
		joinPid int
		fork    forkSpec
		filter  = p.seccomp
	)
	if p.key.exec != "" {
		m := a.mainOf(p.key.container)
		if m.pid > 0 && ownsMountNS(m.req) {
			joinPid = m.pid
		}
		if m.pid > 0 && (m.req.OwnPidNamespace || m.req.PidNamespaceOf != "") {
			fork.joinPidNS = m.pid
		}
		fork.cgroup = m.cgroup
		if filter == nil {
			filter = m.seccomp
		}
	} else if t := p.req.PidNamespaceOf; t != "" {
		m := a.mainOf(t)
		if m.pid <= 0 {
			return nil, errf(codes.FailedPrecondition, "process %s: container %s, whose PID namespace it is to share, is not running", p.key, t)
		}
		fork.joinPidNS = m.pid
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.state != api.ProcessState_CREATED || p.released {
		return nil, errf(codes.FailedPrecondition, "process %s was already started", p.key)
	}
	startErr := func(err error) (*api.StartProcessResponse, error) {
		p.state = api.ProcessState_EXITED
		p.exit = &api.ExitStatus{ExitCode: exitCodeForStartError(err), ExitedUnixNano: time.Now().UnixNano()}
		for _, f := range p.child {
			f.Close()
		}
		p.child = nil
		for _, r := range p.readers {
			r.Close()
		}
		for _, b := range p.out {
			b.finish()
		}
		close(p.exited)
		c := codes.FailedPrecondition
		if errors.Is(err, fs.ErrNotExist) {
			c = codes.NotFound
		}
		return nil, errf(c, "process %s: starting %q: %v", p.key, p.req.Argv[0], err)
	}
	path, err := lookPath(p.req.Argv[0], p.req.Env)
	if err != nil {
		return startErr(err)
	}
	if st, err := os.Stat(p.cmd.Dir); err != nil || !st.IsDir() {
		if err == nil {
			err = syscall.ENOTDIR
		}
		return startErr(&fs.PathError{Op: "chdir", Path: p.cmd.Dir, Err: err})
	}
	p.cmd.Path = path
	main := p.key.exec == ""
	h := helperSpec{
		RestrictCaps: p.req.RestrictCapabilities, Caps: p.req.Capabilities, NoNewPrivs: p.req.NoNewPrivs,
		UID: p.req.Uid, GID: p.req.Gid, Groups: p.req.AdditionalGids,
		NewMountNS: main && ownsMountNS(p.req), ReadOnlyRoot: p.req.ReadOnlyRootfs, ReadonlyPaths: p.req.ReadonlyPaths,
		MaskedPaths: p.req.MaskedPaths,
		// A process in a PID namespace other than the guest's sees it in
		// a /proc of its own.
		NewPidNS: main && (p.req.OwnPidNamespace || p.req.PidNamespaceOf != ""),
		Seccomp:  filter,
	}
	h.JoinMountNS = joinPid
	fork.newPidNS = main && p.req.OwnPidNamespace
	if main && (p.req.MemoryLimitBytes > 0 || p.req.CpuQuotaUs > 0) {
		dir, err := containerCgroup(p.key.container, cgroupLimits{memory: p.req.MemoryLimitBytes, cpuQuota: p.req.CpuQuotaUs, cpuPeriod: p.req.CpuPeriodUs})
		switch {
		case errors.Is(err, errNoMemoryCgroup) && runtime.GOOS == "linux":
			a.cfg.log.Warn("container limits not applied: the VM's size bounds it", "id", p.key.String(), "memory", p.req.MemoryLimitBytes, "cpuQuota", p.req.CpuQuotaUs, "err", err)
		case err != nil:
			return startErr(err)
		}
		fork.cgroup = dir
	}
	p.cgroup = fork.cgroup
	var setupDone *os.File
	if h.RestrictCaps || h.NoNewPrivs || h.NewMountNS || h.JoinMountNS > 0 || h.Seccomp != nil {
		// The agent re-executed finishes the setup the fork cannot.
		args, err := helperArgs(path, p.req.Argv, h)
		if err != nil {
			return startErr(err)
		}
		// The helper gets the write end of a pipe as fd 3, close-on-exec:
		// the read end sees EOF once it has exec'd the process (or died).
		// StartProcess answers only then, so an exec that joins the
		// container's mount namespace finds it set up, never the agent's.
		r, w, err := os.Pipe()
		if err != nil {
			return startErr(err)
		}
		defer r.Close()
		setupDone = r
		p.cmd.ExtraFiles = []*os.File{w}
		args = append(args[:2], append([]string{"sync=3"}, args[2:]...)...)
		p.cmd.Path, p.cmd.Args = a.cfg.execHelperPath(), args
		p.cmd.SysProcAttr.Credential = nil
	}
	var done <-chan waitResult
	err = startIsolated(p.cmd, fork, func() error {
		var err error
		done, err = a.reaper.start(p.cmd)
		return err
	})
	for _, f := range p.cmd.ExtraFiles {
		f.Close()
	}
	if err != nil {
		if main && p.cgroup != "" {
			removeCgroup(p.cgroup)
		}
		return startErr(err)
	}
	if setupDone != nil {
		waitEOF(setupDone, 30*time.Second)
	}
	p.state = api.ProcessState_RUNNING
	p.pid = p.cmd.Process.Pid
	p.started = time.Now()
	for _, f := range p.child {
		f.Close()
	}
	p.child = nil
	for i, r := range p.readers {
		go p.out[i].pump(r)
	}
	go p.wait(done)
	a.cfg.log.Debug("process started", "id", p.key.String(), "pid", p.pid, "argv", p.req.Argv)
	return &api.StartProcessResponse{Pid: uint32(p.pid)}, nil
}

// waitEOF reads f until EOF or the timeout (a helper stuck before its
// exec must not hold StartProcess forever).
func waitEOF(f *os.File, timeout time.Duration) {
	f.SetReadDeadline(time.Now().Add(timeout))
	io.Copy(io.Discard, f)
}

func (p *process) wait(done <-chan waitResult) {
	r := <-done
	st := &api.ExitStatus{ExitedUnixNano: r.at.UnixNano()}
	switch ws := r.status; {
	case r.err != nil:
		st.ExitCode = 255
	case ws.Signaled():
		st.Signaled = true
		st.Signal = uint32(ws.Signal())
		st.ExitCode = 128 + int32(ws.Signal())
	default:
		st.ExitCode = int32(ws.ExitStatus())
	}
	// The container's cgroup is new at each start: any OOM kill counted
	// there happened in its life (containerd's reading: the reason is
	// OOMKilled whichever of its processes the kernel chose).
	if p.cgroup != "" && oomKills(p.cgroup) > 0 {
		st.OomKilled = true
	}
	p.mu.Lock()
	p.state = api.ProcessState_EXITED
	p.exit = st
	p.mu.Unlock()
	close(p.exited)
}

func (a *agent) ReadOutput(ctx context.Context, stream api.Agent_ReadOutputServer) error {
	req, err := stream.Recv()
	if err != nil {
		return err
	}
	p, err := a.lookup(req.Id)
	if err != nil {
		return err
	}
	var b *outBuf
	switch req.Stdio {
	case api.Stdio_STDOUT:
		b = p.out[0]
	case api.Stdio_STDERR:
		b = p.out[1]
	default:
		return errf(codes.InvalidArgument, "ReadOutput: stdio must be STDOUT or STDERR")
	}
	if req.Ack > 0 {
		// The first message may acknowledge what an earlier reader got.
		b.ackFirst(req.Ack)
	}
	return b.serve(ctx, stream, uint64(req.Window))
}

func (a *agent) WriteStdin(ctx context.Context, req *api.WriteStdinRequest) (*api.WriteStdinResponse, error) {
	p, err := a.lookup(req.Id)
	if err != nil {
		return nil, err
	}
	p.stdinMu.Lock()
	defer p.stdinMu.Unlock()
	p.mu.Lock()
	f := p.stdin
	state := p.state
	p.mu.Unlock()
	if f == nil {
		return nil, errf(codes.FailedPrecondition, "process %s has no open stdin", p.key)
	}
	if state == api.ProcessState_CREATED {
		return nil, errf(codes.FailedPrecondition, "process %s is not started", p.key)
	}
	stop := context.AfterFunc(ctx, func() { f.SetWriteDeadline(time.Unix(1, 0)) })
	n, err := f.Write(req.Data)
	if !stop() {
		f.SetWriteDeadline(time.Time{})
		if err != nil {
			return &api.WriteStdinResponse{Written: uint32(n)}, ctx.Err()
		}
	}
	if err != nil {
		return &api.WriteStdinResponse{Written: uint32(n)}, errf(codes.FailedPrecondition, "process %s: writing stdin: %v", p.key, err)
	}
	return &api.WriteStdinResponse{Written: hostileWritten(n, len(req.Data))}, nil
}

func (a *agent) CloseStdin(ctx context.Context, req *api.CloseStdinRequest) (*api.CloseStdinResponse, error) {
	p, err := a.lookup(req.Id)
	if err != nil {
		return nil, err
	}
	p.stdinMu.Lock()
	defer p.stdinMu.Unlock()
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.stdin == nil {
		return &api.CloseStdinResponse{}, nil
	}
	if p.stdin == p.pty {
		// A terminal has no half close: send EOF (^D at the line start).
		if p.state == api.ProcessState_RUNNING {
			p.pty.Write([]byte{4})
		}
	} else {
		p.stdin.Close()
	}
	p.stdin = nil
	return &api.CloseStdinResponse{}, nil
}

func (a *agent) ResizeTty(ctx context.Context, req *api.ResizeTtyRequest) (*api.ResizeTtyResponse, error) {
	p, err := a.lookup(req.Id)
	if err != nil {
		return nil, err
	}
	if req.Size == nil || req.Size.Rows == 0 || req.Size.Cols == 0 {
		return nil, errf(codes.InvalidArgument, "ResizeTty: rows and cols must be positive")
	}
	if p.pty == nil {
		return nil, errf(codes.FailedPrecondition, "process %s has no terminal", p.key)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.state == api.ProcessState_EXITED {
		return &api.ResizeTtyResponse{}, nil
	}
	if err := setWinsize(p.pty, req.Size.Rows, req.Size.Cols); err != nil {
		return nil, osErr(codes.Internal, err, "process %s: resizing the terminal", p.key)
	}
	return &api.ResizeTtyResponse{}, nil
}

// signal sends sig to p (its group with group); false if it is not running.
func (p *process) signal(sig syscall.Signal, group bool) (bool, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.state != api.ProcessState_RUNNING {
		return false, nil
	}
	if group {
		// The process leads its own session and group (Setsid).
		err := syscall.Kill(-p.pid, sig)
		if err == syscall.ESRCH {
			return false, nil
		}
		return err == nil, err
	}
	err := p.cmd.Process.Signal(sig)
	if errors.Is(err, os.ErrProcessDone) {
		return false, nil
	}
	return err == nil, err
}

func (a *agent) SignalProcess(ctx context.Context, req *api.SignalProcessRequest) (*api.SignalProcessResponse, error) {
	p, err := a.lookup(req.Id)
	if err != nil {
		return nil, err
	}
	if req.Signal == 0 || req.Signal > 64 {
		return nil, errf(codes.InvalidArgument, "invalid signal %d", req.Signal)
	}
	p.mu.Lock()
	state := p.state
	p.mu.Unlock()
	if state == api.ProcessState_CREATED {
		return nil, errf(codes.FailedPrecondition, "process %s is not started", p.key)
	}
	if _, err := p.signal(syscall.Signal(req.Signal), req.Group); err != nil {
		return nil, osErr(codes.Internal, err, "process %s: signal %d", p.key, req.Signal)
	}
	return &api.SignalProcessResponse{}, nil
}

func (a *agent) WaitProcess(ctx context.Context, req *api.WaitProcessRequest) (*api.WaitProcessResponse, error) {
	p, err := a.lookup(req.Id)
	if err != nil {
		return nil, err
	}
	select {
	case <-p.exited:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	return &api.WaitProcessResponse{Status: p.exit}, nil
}

func (p *process) info() *api.ProcessInfo {
	p.mu.Lock()
	defer p.mu.Unlock()
	pi := &api.ProcessInfo{
		Id:    &api.ProcessID{ContainerId: p.key.container, ExecId: p.key.exec},
		State: p.state,
		Pid:   uint32(p.pid),
		Argv:  p.req.Argv,
		Tty:   p.req.Tty,
		Exit:  p.exit,
	}
	if !p.started.IsZero() {
		pi.StartedUnixNano = p.started.UnixNano()
	}
	return pi
}

func (a *agent) ListProcesses(ctx context.Context, req *api.ListProcessesRequest) (*api.ListProcessesResponse, error) {
	r := &api.ListProcessesResponse{}
	for _, p := range a.snapshot(req.ContainerId) {
		r.Processes = append(r.Processes, p.info())
	}
	return r, nil
}

// snapshot lists the processes of container ("" = all).
func (a *agent) snapshot(container string) []*process {
	a.mu.Lock()
	defer a.mu.Unlock()
	var ps []*process
	for k, p := range a.procs {
		if container == "" || k.container == container {
			ps = append(ps, p)
		}
	}
	return ps
}

func (a *agent) RemoveProcess(ctx context.Context, req *api.RemoveProcessRequest) (*api.RemoveProcessResponse, error) {
	k, err := keyOf(req.Id)
	if err != nil {
		return nil, err
	}
	a.mu.Lock()
	p := a.procs[k]
	if p != nil {
		p.mu.Lock()
		running := p.state == api.ProcessState_RUNNING
		p.mu.Unlock()
		if running {
			a.mu.Unlock()
			return nil, errf(codes.FailedPrecondition, "process %s is still running", k)
		}
		delete(a.procs, k)
	}
	a.mu.Unlock()
	if p != nil {
		p.release()
		if k.exec == "" && p.cgroup != "" {
			if err := removeCgroup(p.cgroup); err != nil {
				a.cfg.log.Warn("removing a container's cgroup", "id", k.String(), "err", err)
			}
		}
		// Readers still attached end; pumps end when the last holders of
		// the pipes are gone. Drop what nobody will read.
		for _, b := range p.out {
			b.drop()
		}
		if p.pty != nil {
			p.pty.Close()
		}
	}
	return &api.RemoveProcessResponse{}, nil
}

func (a *agent) KillAll(ctx context.Context, req *api.KillAllRequest) (*api.KillAllResponse, error) {
	sig := syscall.SIGKILL
	if req.Signal != 0 {
		sig = syscall.Signal(req.Signal)
	}
	n := a.killAll(req.ContainerId, sig)
	return &api.KillAllResponse{Signaled: uint32(n)}, nil
}

func (a *agent) killAll(container string, sig syscall.Signal) int {
	n := 0
	for _, p := range a.snapshot(container) {
		if ok, _ := p.signal(sig, true); ok {
			n++
		} else if ok, _ := p.signal(sig, false); ok {
			n++
		}
	}
	return n
}

// stopAll ends every process: SIGTERM, then SIGKILL after grace.
func (a *agent) stopAll(grace time.Duration) {
	if a.killAll("", syscall.SIGTERM) == 0 {
		return
	}
	deadline := time.After(grace)
	for _, p := range a.snapshot("") {
		p.mu.Lock()
		running := p.state == api.ProcessState_RUNNING
		p.mu.Unlock()
		if !running {
			continue
		}
		select {
		case <-p.exited:
		case <-deadline:
			a.killAll("", syscall.SIGKILL)
			return
		}
	}
}

// ownsMountNS tells whether a container's main process gets a mount
// namespace of its own (its execs join it).
func ownsMountNS(req *api.CreateProcessRequest) bool {
	return req.OwnMountNamespace || req.OwnPidNamespace || req.PidNamespaceOf != "" || len(req.MaskedPaths) > 0
}

// mainInfo is what an exec takes from its container's main process.
type mainInfo struct {
	pid     int // 0 unless running
	req     *api.CreateProcessRequest
	cgroup  string
	seccomp *compiledSeccomp
}

// mainOf describes a container's main process.
func (a *agent) mainOf(container string) mainInfo {
	a.mu.Lock()
	main := a.procs[procKey{container, ""}]
	a.mu.Unlock()
	if main == nil {
		return mainInfo{req: &api.CreateProcessRequest{}}
	}
	main.mu.Lock()
	defer main.mu.Unlock()
	m := mainInfo{req: main.req, cgroup: main.cgroup, seccomp: main.seccomp}
	if main.state == api.ProcessState_RUNNING {
		m.pid = main.pid
	}
	return m
}

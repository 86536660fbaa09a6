package shim

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/containerd/ttrpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/macvz/macvz/internal/guard"
	"github.com/macvz/macvz/runtime/agentapi"
	"github.com/macvz/macvz/runtime/shimapi"
)

// Exit codes and reasons of recorded exits.
const (
	// UnknownExitCode is recorded when the agent could not say how a
	// process ended (the VM stopped, the agent lost it); containerd uses
	// the same value for lost tasks.
	UnknownExitCode = 255

	ReasonCompleted = "Completed"
	ReasonError     = "Error"
	ReasonOOMKilled = "OOMKilled"
)

// maxClockSkew is how far ahead of the host's clock a guest's exit time
// may be (the shim keeps the guest's clock within milliseconds).
const maxClockSkew = time.Minute

// outputDrainWait: after a process exits, how long its exit waits for the
// rest of its output to reach the log before being recorded (children
// that inherited its stdout may keep the stream open for ever).
var outputDrainWait = 2 * time.Second

// ExitRecord is the JSON of an exit file,
// <dir>/exits/<container_id>[.<exec_id>].json.
type ExitRecord struct {
	ContainerID string    `json:"containerId"`
	ExecID      string    `json:"execId,omitempty"`
	ExitCode    int32     `json:"exitCode"`
	Signaled    bool      `json:"signaled,omitempty"`
	Signal      uint32    `json:"signal,omitempty"`
	FinishedAt  time.Time `json:"finishedAt"`
	Reason      string    `json:"reason"`
	Message     string    `json:"message,omitempty"`
	LogPath     string    `json:"logPath,omitempty"`
	WatchedAt   time.Time `json:"watchedAt"`
}

// Exit converts the record to the API's message.
func (r *ExitRecord) Exit() *shimapi.ProcessExit {
	e := &shimapi.ProcessExit{
		ExitCode: r.ExitCode,
		Signaled: r.Signaled,
		Signal:   r.Signal,
		Reason:   r.Reason,
		Message:  r.Message,
	}
	if !r.FinishedAt.IsZero() {
		e.FinishedUnixNano = r.FinishedAt.UnixNano()
	}
	return e
}

// procKey names a process: exec "" is a container's main process.
type procKey struct{ container, exec string }

func (k procKey) String() string {
	if k.exec == "" {
		return k.container
	}
	return k.container + "/" + k.exec
}

// fileName is the exit file's name.
func (k procKey) fileName() string {
	if k.exec == "" {
		return k.container + ".json"
	}
	return k.container + "." + k.exec + ".json"
}

func (k procKey) id() *agentapi.ProcessID {
	return &agentapi.ProcessID{ContainerId: k.container, ExecId: k.exec}
}

// validID checks an id used in a file name.
func validID(what, s string, empty bool) error {
	if s == "" {
		if empty {
			return nil
		}
		return status.Errorf(codes.InvalidArgument, "%s is empty", what)
	}
	if len(s) > 128 || strings.ContainsAny(s, "/.\x00\\") || strings.TrimSpace(s) != s {
		return status.Errorf(codes.InvalidArgument, "%s %q: want at most 128 characters, no '/', '.', '\\\\' or surrounding spaces", what, s)
	}
	return nil
}

func keyOf(container, exec string) (procKey, error) {
	if err := validID("container_id", container, false); err != nil {
		return procKey{}, err
	}
	if err := validID("exec_id", exec, true); err != nil {
		return procKey{}, err
	}
	return procKey{container, exec}, nil
}

// procTable is the set of watched processes.
type procTable struct {
	log   *slog.Logger
	dir   string // exits directory
	agent *agentConn
	ctx   context.Context

	mu    sync.Mutex
	procs map[procKey]*watched
}

// watched is one supervised process.
type watched struct {
	t         *procTable
	key       procKey
	logPath   string
	watchedAt time.Time
	log       *slog.Logger
	cancel    context.CancelFunc
	clog      *criLog          // nil without a log
	outs      [2]*outputCopier // stdout, stderr; nil without a log
	done      chan struct{}    // closed once the exit is recorded (or forgotten)

	mu   sync.Mutex
	exit *ExitRecord
}

func newProcTable(ctx context.Context, log *slog.Logger, dir string, agent *agentConn) *procTable {
	return &procTable{log: log, dir: dir, agent: agent, ctx: ctx, procs: map[procKey]*watched{}}
}

// load reads the exit files a previous shim in this directory left.
func (t *procTable) load() {
	ents, err := os.ReadDir(t.dir)
	if err != nil {
		return
	}
	for _, e := range ents {
		if !strings.HasSuffix(e.Name(), ".json") || strings.HasPrefix(e.Name(), ".") {
			continue
		}
		var r ExitRecord
		if err := readJSON(filepath.Join(t.dir, e.Name()), &r); err != nil {
			t.log.Warn("ignoring an exit file", "err", err)
			continue
		}
		k, err := keyOf(r.ContainerID, r.ExecID)
		if err != nil || k.fileName() != e.Name() {
			continue
		}
		w := &watched{t: t, key: k, logPath: r.LogPath, watchedAt: r.WatchedAt, exit: &r, done: make(chan struct{}), cancel: func() {},
			log: t.log.With("container", k.container, "exec", k.exec)}
		close(w.done)
		t.procs[k] = w
	}
}

func (t *procTable) lookup(k procKey) *watched {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.procs[k]
}

// inGuest checks that the guest has the process k: WatchProcess's
// caller (an older daemon) created it on its own, the shim's StartProcess
// has just done so and does not ask again.
func (t *procTable) inGuest(ctx context.Context, k procKey) error {
	s, err := t.agent.get(ctx)
	if err != nil {
		return err
	}
	list, err := s.api.ListProcesses(ctx, &agentapi.ListProcessesRequest{ContainerId: k.container})
	if err != nil {
		return agentErr(err)
	}
	for _, p := range list.Processes {
		if p.Id.GetContainerId() == k.container && p.Id.GetExecId() == k.exec {
			return nil
		}
	}
	return status.Errorf(codes.NotFound, "the guest has no process %s", k)
}

// checkLogPath refuses a container log path watch would not open.
func checkLogPath(logPath string) error {
	if logPath != "" && (!filepath.IsAbs(logPath) || filepath.Clean(logPath) != logPath) {
		return status.Errorf(codes.InvalidArgument, "log_path %q is not a clean absolute path", logPath)
	}
	return nil
}

// watch starts supervising k, which the guest has.
func (t *procTable) watch(ctx context.Context, k procKey, logPath string) error {
	if err := checkLogPath(logPath); err != nil {
		return err
	}
	t.mu.Lock()
	if w := t.procs[k]; w != nil {
		t.mu.Unlock()
		if w.logPath != logPath {
			return status.Errorf(codes.AlreadyExists, "process %s is already watched with log %q", k, w.logPath)
		}
		return nil
	}
	t.mu.Unlock()

	var err error
	w := &watched{t: t, key: k, logPath: logPath, watchedAt: time.Now(), done: make(chan struct{}),
		log: t.log.With("container", k.container, "exec", k.exec)}
	if logPath != "" {
		w.clog, err = openCRILog(logPath, w.log)
		if err != nil {
			return status.Errorf(codes.FailedPrecondition, "opening the container log: %v", err)
		}
		w.outs[0] = newOutputCopier(w, agentapi.Stdio_STDOUT, newLineWriter(w.clog, "stdout"))
		w.outs[1] = newOutputCopier(w, agentapi.Stdio_STDERR, newLineWriter(w.clog, "stderr"))
	}
	t.mu.Lock()
	if o := t.procs[k]; o != nil { // raced with another WatchProcess
		t.mu.Unlock()
		if w.clog != nil {
			w.clog.close()
		}
		if o.logPath != logPath {
			return status.Errorf(codes.AlreadyExists, "process %s is already watched with log %q", k, o.logPath)
		}
		return nil
	}
	wctx, cancel := context.WithCancel(t.ctx)
	w.cancel = cancel
	t.procs[k] = w
	t.mu.Unlock()
	w.log.Info("watching process", "log", logPath)
	go func() {
		// Output and exit come from the guest: a panic while handling
		// them records an unknown exit for this process only.
		if err := guard.Do(w.log, "process watch", func() error { w.run(wctx); return nil }); err != nil {
			w.cancel()
			w.record(nil, "the shim failed while watching the process: "+err.Error())
		}
	}()
	return nil
}

// forget drops k's record and exit file.
func (t *procTable) forget(k procKey) {
	t.mu.Lock()
	w := t.procs[k]
	delete(t.procs, k)
	t.mu.Unlock()
	if w != nil {
		w.cancel()
	}
	os.Remove(filepath.Join(t.dir, k.fileName()))
}

func (t *procTable) list() []*watched {
	t.mu.Lock()
	defer t.mu.Unlock()
	ws := make([]*watched, 0, len(t.procs))
	for _, w := range t.procs {
		ws = append(ws, w)
	}
	return ws
}

// status is w's API status.
func (w *watched) status() *shimapi.ProcessStatusResponse {
	r := &shimapi.ProcessStatusResponse{
		ContainerId: w.key.container,
		ExecId:      w.key.exec,
		State:       shimapi.ProcessState_PROCESS_RUNNING,
		LogPath:     w.logPath,
	}
	if !w.watchedAt.IsZero() {
		r.WatchedUnixNano = w.watchedAt.UnixNano()
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.exit != nil {
		r.State = shimapi.ProcessState_PROCESS_EXITED
		r.Exit = w.exit.Exit()
	}
	return r
}

func (w *watched) exited() *ExitRecord {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.exit
}

// record stores the exit (the first one wins) in memory and on disk.
func (w *watched) record(st *agentapi.ExitStatus, message string) {
	r := &ExitRecord{
		ContainerID: w.key.container,
		ExecID:      w.key.exec,
		ExitCode:    UnknownExitCode,
		FinishedAt:  time.Now(),
		Reason:      ReasonError,
		Message:     message,
		LogPath:     w.logPath,
		WatchedAt:   w.watchedAt,
	}
	if st != nil {
		r.ExitCode = st.ExitCode
		r.Signaled = st.Signaled
		r.Signal = st.Signal
		// The exit time comes from the guest: one before the epoch or
		// in the future is not an exit time (now is).
		if ns := st.ExitedUnixNano; ns > 0 && ns <= r.FinishedAt.Add(maxClockSkew).UnixNano() {
			r.FinishedAt = time.Unix(0, ns)
		}
		switch {
		case st.OomKilled:
			r.Reason = ReasonOOMKilled
		case st.ExitCode == 0 && !st.Signaled:
			r.Reason = ReasonCompleted
		}
	}
	w.mu.Lock()
	if w.exit != nil {
		w.mu.Unlock()
		return
	}
	w.exit = r
	w.mu.Unlock()
	// Still watched? A forgotten process leaves no file behind.
	if w.t.lookup(w.key) == w {
		if err := os.MkdirAll(w.t.dir, 0o700); err == nil {
			err = writeJSON(filepath.Join(w.t.dir, w.key.fileName()), r, 0o600)
			if err != nil {
				w.log.Error("writing the exit file", "err", err)
			}
		}
	}
	w.log.Info("process exited", "code", r.ExitCode, "signaled", r.Signaled, "reason", r.Reason, "message", r.Message)
	close(w.done)
}

// run supervises the process until its exit is recorded and its output
// is copied (or ctx ends: forgotten, shim shutdown).
func (w *watched) run(ctx context.Context) {
	outDone := make(chan struct{})
	var wg sync.WaitGroup
	for _, o := range w.outs {
		if o != nil {
			wg.Add(1)
			go func() {
				defer wg.Done()
				guard.Do(w.log.With("stdio", o.stdio.String()), "output copy to the log", func() error { o.run(ctx); return nil })
			}()
		}
	}
	go func() {
		wg.Wait()
		if w.clog != nil {
			w.clog.close()
		}
		close(outDone)
	}()

	st, msg, ok := w.waitExit(ctx)
	if !ok {
		return
	}
	t := time.NewTimer(outputDrainWait)
	select {
	case <-outDone:
	case <-t.C:
		w.log.Debug("output still open after the exit; recording the exit anyway")
	case <-ctx.Done():
	}
	t.Stop()
	w.record(st, msg)
}

// waitExit waits for the process's exit through the agent, across
// reconnects. ok is false when ctx ended first.
func (w *watched) waitExit(ctx context.Context) (st *agentapi.ExitStatus, msg string, ok bool) {
	backoff := 50 * time.Millisecond
	for {
		s, err := w.t.agent.get(ctx)
		if err == nil {
			var r *agentapi.WaitProcessResponse
			r, err = s.api.WaitProcess(ctx, &agentapi.WaitProcessRequest{Id: w.key.id()})
			if err == nil {
				return r.Status, "", true
			}
			if status.Code(err) == codes.NotFound {
				return nil, "the guest agent has no such process any more (removed, or the agent restarted)", true
			}
		}
		if ctx.Err() != nil {
			return nil, "", false
		}
		if w.t.agent.vmStopped() {
			return nil, "the VM stopped: " + w.t.agent.m.Exit().Reason, true
		}
		if !errors.Is(err, ttrpc.ErrClosed) {
			w.log.Debug("waiting for the process", "err", err)
		}
		if !sleepCtx(ctx, backoff, w.t.agent.waitChange()) {
			return nil, "", false
		}
		backoff = min(2*backoff, time.Second)
	}
}

// sleepCtx sleeps d, less when wake closes; false when ctx ended.
func sleepCtx(ctx context.Context, d time.Duration, wake <-chan struct{}) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
	case <-wake:
	case <-ctx.Done():
		return false
	}
	return true
}

// agentErr is an agent call's error as the shim returns it: statuses
// pass through, a lost connection is Unavailable.
func agentErr(err error) error {
	if err == nil {
		return nil
	}
	if _, ok := status.FromError(err); ok {
		return err
	}
	if errors.Is(err, ttrpc.ErrClosed) || errors.Is(err, io.EOF) {
		return status.Errorf(codes.Unavailable, "the connection to the guest agent was lost: %v", err)
	}
	if errors.Is(err, context.DeadlineExceeded) {
		return status.Error(codes.DeadlineExceeded, err.Error())
	}
	if errors.Is(err, context.Canceled) {
		return status.Error(codes.Canceled, err.Error())
	}
	return status.Error(codes.Unknown, fmt.Sprint(err))
}

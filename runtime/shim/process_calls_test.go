//go:build linux

package shim

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/containerd/errdefs"
	"github.com/containerd/ttrpc"

	"github.com/macvz/macvz/runtime/agentapi"
	"github.com/macvz/macvz/runtime/shimapi"
)

// The shim's process calls (StartProcess, RemoveProcess) and the client's
// fallback to the calls of a shim that predates them.

// oldShimEnv, set in a test shim's environment, makes it serve the Shim
// service as the first release did: without the calls added since (a
// shim left running by the previous daemon version).
const oldShimEnv = "MACVZ_TEST_V1_SHIM"

func init() {
	if os.Getenv(oldShimEnv) == "1" {
		registerShim = registerV1Shim
	}
}

// registerV1Shim registers the Shim service's first-release methods only:
// ttrpc itself answers the others (Unimplemented), as an old shim does.
func registerV1Shim(srv *ttrpc.Server, svc shimapi.ShimService) {
	srv.RegisterService("macvz.shim.v1.Shim", &ttrpc.ServiceDesc{Methods: map[string]ttrpc.Method{
		"Start":         unary(svc.Start),
		"State":         unary(svc.State),
		"Stop":          unary(svc.Stop),
		"Stats":         unary(svc.Stats),
		"Save":          unary(svc.Save),
		"Resume":        unary(svc.Resume),
		"Shutdown":      unary(svc.Shutdown),
		"WatchProcess":  unary(svc.WatchProcess),
		"ProcessStatus": unary(svc.ProcessStatus),
		"WaitProcess":   unary(svc.WaitProcess),
		"ReopenLog":     unary(svc.ReopenLog),
		"ListProcesses": unary(svc.ListProcesses),
		"ForgetProcess": unary(svc.ForgetProcess),
	}})
}

func unary[Req, Resp any](f func(context.Context, *Req) (Resp, error)) ttrpc.Method {
	return func(ctx context.Context, unmarshal func(any) error) (any, error) {
		var req Req
		if err := unmarshal(&req); err != nil {
			return nil, err
		}
		return f(ctx, &req)
	}
}

// spawnWith is spawn with extra environment for the shim.
func spawnWith(t *testing.T, env ...string) string {
	t.Helper()
	dir := sandboxDir(t)
	ctx := ctxT(t, 60*time.Second)
	c, err := Spawn(ctx, SpawnOptions{Dir: dir, Backend: fakeBackend, Spec: fakeSpec(dir, agentBin), LogLevel: "debug", Env: env})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Start(ctx, 30*time.Second); err != nil {
		t.Fatal(err)
	}
	return dir
}

// callCounter counts a client's unary calls by method.
type callCounter struct {
	mu sync.Mutex
	n  map[string]int
}

func (k *callCounter) get(method string) int {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.n[method]
}

// connectCounting is Connect with a client that counts its calls.
func connectCounting(t *testing.T, dir string) (*Client, *callCounter) {
	t.Helper()
	conn, err := dialSocket(ctxT(t, 10*time.Second), filepath.Join(dir, SocketFile))
	if err != nil {
		t.Fatal(err)
	}
	k := &callCounter{n: map[string]int{}}
	c := &Client{dir: dir, done: make(chan struct{})}
	c.tc = ttrpc.NewClient(conn,
		ttrpc.WithOnClose(func() { close(c.done) }),
		ttrpc.WithUnaryClientInterceptor(func(ctx context.Context, req *ttrpc.Request, resp *ttrpc.Response, info *ttrpc.UnaryClientInfo, invoker ttrpc.Invoker) error {
			k.mu.Lock()
			k.n[info.FullMethod]++
			k.mu.Unlock()
			return clientErrors(ctx, req, resp, info, invoker)
		}))
	c.shim = shimapi.NewShimClient(c.tc)
	c.agent = agentapi.NewAgentClient(c.tc)
	t.Cleanup(func() { c.Close() })
	return c, k
}

const (
	mShimStart     = "/macvz.shim.v1.Shim/StartProcess"
	mShimRemove    = "/macvz.shim.v1.Shim/RemoveProcess"
	mShimWatch     = "/macvz.shim.v1.Shim/WatchProcess"
	mShimForget    = "/macvz.shim.v1.Shim/ForgetProcess"
	mAgentCreate   = "/macvz.agent.v1.Agent/CreateProcess"
	mAgentStart    = "/macvz.agent.v1.Agent/StartProcess"
	mAgentRemove   = "/macvz.agent.v1.Agent/RemoveProcess"
	containerShell = "echo out; echo err >&2; exit 4"
)

// inGuest reports whether the guest agent has the process.
func inGuest(t *testing.T, c *Client, id *agentapi.ProcessID) bool {
	t.Helper()
	l, err := c.Agent().ListProcesses(ctxT(t, 10*time.Second), &agentapi.ListProcessesRequest{ContainerId: id.ContainerId})
	if err != nil {
		t.Fatalf("ListProcesses: %v", err)
	}
	for _, p := range l.Processes {
		if p.Id.GetContainerId() == id.ContainerId && p.Id.GetExecId() == id.ExecId {
			return true
		}
	}
	return false
}

func createReq(id *agentapi.ProcessID, argv ...string) *agentapi.CreateProcessRequest {
	return &agentapi.CreateProcessRequest{Id: id, Argv: argv, Env: baseEnv()}
}

// checkStartedAndLogged starts id (sh -c containerShell) through c with a
// log and checks the start time, the recorded exit and the log.
func checkStartedAndLogged(t *testing.T, c *Client, dir string, id *agentapi.ProcessID) {
	t.Helper()
	ctx := ctxT(t, 30*time.Second)
	logPath := filepath.Join(t.TempDir(), id.ContainerId+".log")
	before := time.Now()
	started, err := c.StartProcess(ctx, createReq(id, "sh", "-c", containerShell), logPath)
	if err != nil {
		t.Fatalf("StartProcess: %v", err)
	}
	if started.Before(before) || started.After(time.Now()) {
		t.Errorf("started at %v, not within the call (from %v)", started, before)
	}
	ex := waitExit(t, c, id)
	if ex.ExitCode != 4 || ex.Reason != ReasonError || ex.FinishedUnixNano < started.UnixNano() {
		t.Errorf("exit %v (started %d)", ex, started.UnixNano())
	}
	es := readCRILog(t, logPath)
	if got := streamText(es, "stdout"); got != "out\n" {
		t.Errorf("stdout in the log: %q", got)
	}
	if got := streamText(es, "stderr"); got != "err\n" {
		t.Errorf("stderr in the log: %q", got)
	}
	if rec, err := ReadExit(dir, id.ContainerId, id.ExecId); err != nil || rec.ExitCode != 4 || rec.LogPath != logPath {
		t.Errorf("exit file: %+v %v", rec, err)
	}
}

// checkRemoved removes id through c and checks it is gone everywhere,
// and that removing it again is fine.
func checkRemoved(t *testing.T, c *Client, dir string, id *agentapi.ProcessID) {
	t.Helper()
	ctx := ctxT(t, 30*time.Second)
	if err := c.RemoveProcess(ctx, id); err != nil {
		t.Fatalf("RemoveProcess: %v", err)
	}
	checkGone(t, c, dir, id)
	if err := c.RemoveProcess(ctx, id); err != nil {
		t.Errorf("RemoveProcess again: %v", err)
	}
}

// checkGone: neither the guest nor the shim knows id, no exit file.
func checkGone(t *testing.T, c *Client, dir string, id *agentapi.ProcessID) {
	t.Helper()
	if inGuest(t, c, id) {
		t.Errorf("the guest still has %v", id)
	}
	if _, err := c.Shim().ProcessStatus(ctxT(t, 10*time.Second), &shimapi.ProcessStatusRequest{ContainerId: id.ContainerId, ExecId: id.ExecId}); !errdefs.IsNotFound(err) {
		t.Errorf("ProcessStatus of %v: %v, want NotFound (forgotten)", id, err)
	}
	if _, err := ReadExit(dir, id.ContainerId, id.ExecId); !errdefs.IsNotFound(err) {
		t.Errorf("exit file of %v: %v, want none", id, err)
	}
}

// TestStartRemoveProcess: the shim's own process calls, one call each.
func TestStartRemoveProcess(t *testing.T) {
	dir := spawnWith(t)
	c, calls := connectCounting(t, dir)
	ctx := ctxT(t, 60*time.Second)

	id := pid("ctr1", "")
	checkStartedAndLogged(t, c, dir, id)
	checkRemoved(t, c, dir, id)
	if err := c.RemoveProcess(ctx, pid("never-was", "x")); err != nil {
		t.Errorf("RemoveProcess of an unknown process: %v", err)
	}
	// The daemon made one call per verb; the shim did the rest.
	if c.legacy.Load() || calls.get(mShimStart) != 1 || calls.get(mShimRemove) != 3 ||
		calls.get(mAgentCreate)+calls.get(mAgentStart)+calls.get(mAgentRemove)+calls.get(mShimWatch)+calls.get(mShimForget) != 0 {
		t.Errorf("legacy %v, calls %v", c.legacy.Load(), calls.n)
	}

	// An exec without a log; removed right after it exits: its exit is
	// recorded first (then forgotten).
	eid := pid("ctr1", "exec1")
	if _, err := c.StartProcess(ctx, createReq(eid, "sh", "-c", "exit 0"), ""); err != nil {
		t.Fatal(err)
	}
	if ex := waitExit(t, c, eid); ex.ExitCode != 0 || ex.Reason != ReasonCompleted {
		t.Errorf("exec exit: %v", ex)
	}
	checkRemoved(t, c, dir, eid)

	// Removed as soon as the guest says it exited: the log is complete
	// when RemoveProcess returns.
	qid := pid("quick", "")
	qlog := filepath.Join(t.TempDir(), "q.log")
	if _, err := c.StartProcess(ctx, createReq(qid, "sh", "-c", "echo bye; exit 5"), qlog); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Agent().WaitProcess(ctx, &agentapi.WaitProcessRequest{Id: qid}); err != nil {
		t.Fatal(err)
	}
	checkRemoved(t, c, dir, qid)
	if got := streamText(readCRILog(t, qlog), "stdout"); got != "bye\n" {
		t.Errorf("log after RemoveProcess: %q", got)
	}

	// A running process is not removed from the guest (it is forgotten):
	// kill it first.
	sid := pid("sleeper", "")
	if _, err := c.StartProcess(ctx, createReq(sid, "sleep", "60"), filepath.Join(t.TempDir(), "s.log")); err != nil {
		t.Fatal(err)
	}
	if err := c.RemoveProcess(ctx, sid); !errdefs.IsFailedPrecondition(err) {
		t.Errorf("RemoveProcess of a running process: %v, want FailedPrecondition", err)
	}
	if !inGuest(t, c, sid) {
		t.Error("the running process was removed from the guest")
	}
	if _, err := c.Agent().SignalProcess(ctx, &agentapi.SignalProcessRequest{Id: sid, Signal: uint32(syscall.SIGKILL)}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Agent().WaitProcess(ctx, &agentapi.WaitProcessRequest{Id: sid}); err != nil {
		t.Fatal(err)
	}
	checkRemoved(t, c, dir, sid)

	// Bad requests create nothing.
	bid := pid("bad", "")
	if _, err := c.StartProcess(ctx, createReq(bid, "true"), "relative.log"); !errdefs.IsInvalidArgument(err) {
		t.Errorf("StartProcess with a relative log path: %v, want InvalidArgument", err)
	}
	if _, err := c.StartProcess(ctx, createReq(pid("../x", ""), "true"), ""); !errdefs.IsInvalidArgument(err) {
		t.Errorf("StartProcess with a bad id: %v, want InvalidArgument", err)
	}
	if _, err := c.Shim().StartProcess(ctx, &shimapi.StartProcessRequest{}); !errdefs.IsInvalidArgument(err) {
		t.Errorf("StartProcess without create: %v, want InvalidArgument", err)
	}
	if err := c.RemoveProcess(ctx, pid("", "")); !errdefs.IsInvalidArgument(err) {
		t.Errorf("RemoveProcess without an id: %v, want InvalidArgument", err)
	}
	checkGone(t, c, dir, bid)

	// A process that exists is not started again, nor undone.
	xid := pid("exists", "")
	create(t, c, xid, "true")
	if _, err := c.StartProcess(ctx, createReq(xid, "true"), ""); !errdefs.IsAlreadyExists(err) {
		t.Errorf("StartProcess of an existing process: %v, want AlreadyExists", err)
	}
	if !inGuest(t, c, xid) {
		t.Error("a failed StartProcess removed a process it did not create")
	}
	checkRemoved(t, c, dir, xid) // never started: removable
}

// TestStartProcessUndo: a StartProcess that fails after the create leaves
// nothing in the guest or the shim.
func TestStartProcessUndo(t *testing.T) {
	for _, old := range []bool{false, true} {
		name := "new"
		var env []string
		if old {
			name, env = "v1-shim", []string{oldShimEnv + "=1"}
		}
		t.Run(name, func(t *testing.T) {
			dir := spawnWith(t, env...)
			c, _ := connectCounting(t, dir)
			ctx := ctxT(t, 60*time.Second)

			// The guest cannot start it (no such executable).
			id := pid("nobin", "")
			logPath := filepath.Join(t.TempDir(), "nobin.log")
			_, err := c.StartProcess(ctx, createReq(id, "/nonexistent/binary"), logPath)
			if !errdefs.IsNotFound(err) || !strings.Contains(err.Error(), "starting the process in the guest") {
				t.Errorf("StartProcess of a missing binary: %v, want NotFound from the start", err)
			}
			checkGone(t, c, dir, id)

			// The watch fails: a symbolic link at the log path.
			wid := pid("badlog", "")
			linked := filepath.Join(t.TempDir(), "linked.log")
			if err := os.Symlink(filepath.Join(t.TempDir(), "victim"), linked); err != nil {
				t.Fatal(err)
			}
			_, err = c.StartProcess(ctx, createReq(wid, "true"), linked)
			if !errdefs.IsFailedPrecondition(err) || !strings.Contains(err.Error(), "watching the process") {
				t.Errorf("StartProcess with a symlinked log: %v, want FailedPrecondition from the watch", err)
			}
			checkGone(t, c, dir, wid)
			if c.legacy.Load() != old {
				t.Errorf("legacy %v, want %v", c.legacy.Load(), old)
			}

			// The same ids start fine afterwards.
			checkStartedAndLogged(t, c, dir, pid("nobin", ""))
		})
	}
}

// TestOldShimFallback: a client facing a shim of the first release (no
// StartProcess or RemoveProcess: ttrpc answers Unimplemented) starts,
// watches and removes processes with the calls that shim has, and asks
// the new calls once.
func TestOldShimFallback(t *testing.T) {
	dir := spawnWith(t, oldShimEnv+"=1")
	ctx := ctxT(t, 60*time.Second)

	// What the old shim answers (ttrpc, for a method it does not know).
	raw, err := Connect(ctx, dir)
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	_, err = raw.Shim().StartProcess(ctx, &shimapi.StartProcessRequest{Create: createReq(pid("raw", ""), "true")})
	if !errdefs.IsNotImplemented(err) {
		t.Fatalf("the v1 shim's StartProcess: %v, want Unimplemented", err)
	}
	if _, err := raw.Shim().RemoveProcess(ctx, &shimapi.RemoveProcessRequest{ContainerId: "raw"}); !errdefs.IsNotImplemented(err) {
		t.Fatalf("the v1 shim's RemoveProcess: %v, want Unimplemented", err)
	}
	if inGuest(t, raw, pid("raw", "")) {
		t.Fatal("the refused StartProcess created the process")
	}

	c, calls := connectCounting(t, dir)
	a, b := pid("ctr-a", ""), pid("ctr-b", "")
	checkStartedAndLogged(t, c, dir, a)
	if !c.legacy.Load() {
		t.Error("the client did not note the old shim")
	}
	checkStartedAndLogged(t, c, dir, b)
	checkRemoved(t, c, dir, a)
	checkRemoved(t, c, dir, b)
	// The new call was asked once; everything else went the old way.
	if calls.get(mShimStart) != 1 || calls.get(mShimRemove) != 0 ||
		calls.get(mAgentCreate) != 2 || calls.get(mShimWatch) != 2 || calls.get(mAgentStart) != 2 ||
		calls.get(mShimForget) != 4 || calls.get(mAgentRemove) != 4 {
		t.Errorf("calls %v", calls.n)
	}

	// A client whose first call is RemoveProcess notes it too.
	c2, calls2 := connectCounting(t, dir)
	x := pid("ctr-x", "")
	create(t, c2, x, "true")
	checkRemoved(t, c2, dir, x)
	if !c2.legacy.Load() || calls2.get(mShimRemove) != 1 || calls2.get(mAgentRemove) != 2 {
		t.Errorf("second client: legacy %v, calls %v", c2.legacy.Load(), calls2.n)
	}
	if _, err := c2.StartProcess(ctx, createReq(pid("ctr-y", ""), "true"), ""); err != nil {
		t.Fatal(err)
	}
	if calls2.get(mShimStart) != 0 {
		t.Errorf("StartProcess after a noted old shim asked the new call: %v", calls2.n)
	}
}

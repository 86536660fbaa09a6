package shim

import (
	"context"
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/containerd/ttrpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/macvz/macvz/internal/logbuf"
	"github.com/macvz/macvz/runtime/agentapi"
)

// panicAgentStream is the agent side of a forwarded stream whose Recv
// panics, as a bug reached by a hostile guest's message would.
type panicAgentStream struct{ closed chan struct{} }

func (p *panicAgentStream) Send(*agentapi.OutputRequest) error { return nil }
func (p *panicAgentStream) Recv() (*agentapi.OutputChunk, error) {
	var chunks []*agentapi.OutputChunk
	return chunks[1], nil // index out of range
}
func (p *panicAgentStream) CloseSend() error {
	select {
	case <-p.closed:
	default:
		close(p.closed)
	}
	return nil
}

// callerStream is the caller's side: it waits until the test ends.
type callerStream struct{ ctx context.Context }

func (c *callerStream) Send(*agentapi.OutputChunk) error { return nil }
func (c *callerStream) Recv() (*agentapi.OutputRequest, error) {
	<-c.ctx.Done()
	return nil, io.EOF
}

func TestPumpRecoversPanic(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var logs logbuf.Buffer
	log := slog.New(slog.NewTextHandler(&logs, nil)).With("sandbox", "sb-1", "container", "c-1")
	as := &panicAgentStream{closed: make(chan struct{})}
	err := pump(ctx, log, &callerStream{ctx}, func(context.Context) (clientStream[*agentapi.OutputRequest, *agentapi.OutputChunk], error) {
		return as, nil
	}, &agentapi.OutputRequest{})
	if err == nil || !strings.Contains(err.Error(), "internal error") {
		t.Fatalf("pump = %v, want an internal error", err)
	}
	if out := logs.String(); !strings.Contains(out, "panic recovered") || !strings.Contains(out, "container=c-1") || !strings.Contains(out, "sandbox=sb-1") {
		t.Fatalf("log = %q, want the panic with the sandbox and container", out)
	}
	// The process is alive: the test goes on.
}

func TestErrorInterceptorRecoversPanic(t *testing.T) {
	_, err := errorInterceptor(context.Background(), func(any) error { return nil }, &ttrpc.UnaryServerInfo{FullMethod: "/agent/Stats"},
		func(context.Context, func(any) error) (any, error) {
			var m map[string]int
			m["x"] = 1 // assignment to a nil map
			return nil, nil
		})
	if status.Code(err) != codes.Internal {
		t.Fatalf("err = %v, want Internal", err)
	}
}

func TestRecordRejectsGuestExitTimes(t *testing.T) {
	tbl := newProcTable(context.Background(), slog.New(slog.NewTextHandler(io.Discard, nil)), t.TempDir(), nil)
	for _, ns := range []int64{-1, 0, time.Now().Add(time.Hour).UnixNano(), 1<<63 - 1} {
		k := procKey{"c", ""}
		w := &watched{t: tbl, key: k, done: make(chan struct{}), log: tbl.log, cancel: func() {}}
		tbl.procs[k] = w
		before := time.Now()
		w.record(&agentapi.ExitStatus{ExitCode: 3, ExitedUnixNano: ns}, "")
		got := w.exited().FinishedAt
		if got.Before(before) || got.After(time.Now()) {
			t.Errorf("exit time %d from the guest: recorded %v, want now", ns, got)
		}
		tbl.forget(k)
	}
	// A plausible one is kept.
	k := procKey{"c", ""}
	w := &watched{t: tbl, key: k, done: make(chan struct{}), log: tbl.log, cancel: func() {}}
	at := time.Now().Add(-time.Second).Truncate(time.Microsecond)
	w.record(&agentapi.ExitStatus{ExitedUnixNano: at.UnixNano()}, "")
	if got := w.exited().FinishedAt; !got.Equal(at) {
		t.Errorf("recorded %v, want %v", got, at)
	}
}

package cri

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"strings"
	"testing"

	"github.com/containerd/errdefs"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/macvz/macvz/runtime/agentapi"
)

// stdinAgent is a guest agent that answers WriteStdin with what written
// says (the guest controls it); the rest of the API is not used.
type stdinAgent struct {
	agentapi.AgentClient
	written func(n int) uint32
	got     bytes.Buffer
	closed  bool
}

func (a *stdinAgent) WriteStdin(_ context.Context, r *agentapi.WriteStdinRequest) (*agentapi.WriteStdinResponse, error) {
	w := a.written(len(r.GetData()))
	a.got.Write(r.GetData()[:min(int(w), len(r.GetData()))])
	return &agentapi.WriteStdinResponse{Written: w}, nil
}

func (a *stdinAgent) CloseStdin(context.Context, *agentapi.CloseStdinRequest) (*agentapi.CloseStdinResponse, error) {
	a.closed = true
	return &agentapi.CloseStdinResponse{}, nil
}

func TestCopyStdinRejectsGuestWrittenCounts(t *testing.T) {
	id := &agentapi.ProcessID{ContainerId: "c1", ExecId: "e1"}
	for _, tc := range []struct {
		name    string
		written func(n int) uint32
	}{
		{"more than sent", func(n int) uint32 { return uint32(n) + 1 }},
		{"far more than sent", func(int) uint32 { return 1<<32 - 1 }},
		{"nothing", func(int) uint32 { return 0 }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a := &stdinAgent{written: tc.written}
			err := copyStdin(context.Background(), a, id, strings.NewReader("hello"), true)
			if err == nil || !errdefs.IsUnknown(err) || !strings.Contains(err.Error(), "the guest agent reported writing") {
				t.Fatalf("copyStdin = %v, want an error about the guest's count", err)
			}
			// The session ends on it.
			ctx, cancel := context.WithCancelCause(context.Background())
			endOnGuestError(slog.New(slog.DiscardHandler), cancel, err)
			if ctx.Err() == nil {
				t.Error("the session goes on after the guest's nonsense")
			}
			// The client is told why, not "context canceled".
			if cause := guestCause(ctx); cause == nil || !strings.Contains(cause.Error(), "the guest agent reported writing") {
				t.Errorf("the session's error: %v", cause)
			}
			if a.closed {
				t.Error("stdin closed after a failed copy")
			}
		})
	}
}

func TestEndOnGuestErrorKeepsOtherErrors(t *testing.T) {
	ctx, cancel := context.WithCancelCause(context.Background())
	defer cancel(nil)
	endOnGuestError(slog.New(slog.DiscardHandler), cancel, fmt.Errorf("process gone: %w", errdefs.ErrNotFound))
	endOnGuestError(slog.New(slog.DiscardHandler), cancel, nil)
	if ctx.Err() != nil {
		t.Error("an ordinary stdin error ended the session")
	}
	cancel(nil)
	if guestCause(ctx) != nil {
		t.Error("a session ended by its client blames the guest")
	}
}

func TestCopyStdinShortWrites(t *testing.T) {
	a := &stdinAgent{written: func(n int) uint32 { return uint32(min(n, 2)) }}
	in := strings.Repeat("0123456789", 10000) // several chunks
	if err := copyStdin(context.Background(), a, &agentapi.ProcessID{ContainerId: "c1"}, strings.NewReader(in), true); err != nil {
		t.Fatal(err)
	}
	if a.got.String() != in || !a.closed {
		t.Fatalf("guest got %d bytes (closed %v), want %d and closed", a.got.Len(), a.closed, len(in))
	}
}

// A panic in a streaming session (here: a Service with no store) ends
// that session with an error; the daemon goes on.
func TestStreamSessionsRecoverPanics(t *testing.T) {
	r := streamRuntime{s: &Service{}}
	ctx := context.Background()
	for name, run := range map[string]func() error{
		"exec":   func() error { return r.Exec(ctx, "c1", []string{"true"}, nil, nil, nil, false, nil) },
		"attach": func() error { return r.Attach(ctx, "c1", nil, nil, nil, false, nil) },
		"port-forward": func() error {
			return r.PortForward(ctx, "sb1", 80, nil)
		},
	} {
		if err := run(); !errdefs.IsInternal(err) {
			t.Errorf("%s: %v, want an internal error", name, err)
		}
	}
}

func TestCRICallsRecoverPanics(t *testing.T) {
	_, err := unaryErrors(context.Background(), &runtimeapi.ContainerStatsRequest{ContainerId: "c1"}, &grpc.UnaryServerInfo{FullMethod: "/runtime.v1.RuntimeService/ContainerStats"},
		func(context.Context, any) (any, error) {
			var s *agentapi.StatsResponse
			_ = s.Cpu.UsageCoreNanoseconds // nil dereference
			return nil, nil
		})
	if status.Code(err) != codes.Internal {
		t.Fatalf("err = %v, want Internal", err)
	}
}

func TestStatsTimeFromGuest(t *testing.T) {
	for _, ts := range []int64{0, -5, 1, 1<<63 - 1} {
		got := statsTime(&agentapi.StatsResponse{TimestampUnixNano: ts})
		if got == ts {
			t.Errorf("guest timestamp %d kept", ts)
		}
	}
}

package shim

import (
	"context"
	"io"
	"log/slog"
	"net"
	"path/filepath"
	"testing"
	"time"

	"github.com/containerd/ttrpc"

	"github.com/macvz/macvz/runtime/agentapi"
	"github.com/macvz/macvz/runtime/vm"
)

// pingAgent records the pings it is sent; it answers nothing else.
type pingAgent struct {
	agentapi.AgentService
	pings chan *agentapi.PingRequest
}

func (p *pingAgent) Ping(ctx context.Context, req *agentapi.PingRequest) (*agentapi.PingResponse, error) {
	p.pings <- req
	return &agentapi.PingResponse{AgentVersion: "test"}, nil
}

// sockMachine is a running VM whose agent channel is a unix socket
// served by a pingAgent: a VM restored from a saved state, as the new
// shim that restores it sees it.
type sockMachine struct {
	vm.Machine
	sock string
	done chan struct{}
}

func (m *sockMachine) State() vm.State       { return vm.StateRunning }
func (m *sockMachine) Done() <-chan struct{} { return m.done }

func (m *sockMachine) DialAgent(ctx context.Context) (net.Conn, error) {
	var d net.Dialer
	return d.DialContext(ctx, "unix", m.sock)
}

// The first call of a connection pings the agent with the host's time:
// that is what sets the clock of a guest restored from a saved state
// (its shim is new, so its first agent call makes a connection), and of
// one that ran on after a save.
func TestConnectSendsHostTime(t *testing.T) {
	ag := &pingAgent{pings: make(chan *agentapi.PingRequest, 10)}
	srv, err := ttrpc.NewServer()
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	agentapi.RegisterAgentService(srv, ag)
	sock := filepath.Join(t.TempDir(), "agent.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(context.Background(), l)
	m := &sockMachine{sock: sock, done: make(chan struct{})}
	defer close(m.done)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	a := newAgentConn(ctx, slog.New(slog.NewTextHandler(io.Discard, nil)), m, false)

	before := time.Now()
	if _, err := a.get(ctx); err != nil {
		t.Fatal(err)
	}
	after := time.Now()
	select {
	case req := <-ag.pings:
		host := time.Unix(0, req.HostTimeUnixNano)
		if host.Before(before.Add(-time.Second)) || host.After(after.Add(time.Second)) {
			t.Errorf("the connection's ping carries %v, not the host's time (between %v and %v)", host, before, after)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no ping")
	}

	// After a save the agent is reached again by a new connection, which
	// pings again.
	a.drop(nil)
	if _, err := a.get(ctx); err != nil {
		t.Fatal(err)
	}
	select {
	case req := <-ag.pings:
		if req.HostTimeUnixNano == 0 {
			t.Error("the new connection's ping carries no host time")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no ping on the new connection")
	}
}

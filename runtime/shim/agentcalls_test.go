//go:build linux

package shim

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/containerd/errdefs"

	"github.com/macvz/macvz/runtime/agentapi"
	"github.com/macvz/macvz/runtime/shimapi"
)

// agentCalls records what an AgentCallObserver is told.
type agentCalls struct {
	mu    sync.Mutex
	calls []string // method, "!" appended when the call failed
}

func (a *agentCalls) observe(method string, took time.Duration, err error) {
	if took <= 0 {
		method += "?"
	}
	if err != nil {
		method += "!"
	}
	a.mu.Lock()
	a.calls = append(a.calls, method)
	a.mu.Unlock()
}

func (a *agentCalls) take() []string {
	a.mu.Lock()
	defer a.mu.Unlock()
	out := a.calls
	a.calls = nil
	return out
}

// TestAgentCallObserver: the agent's calls through the shim are timed,
// the shim's own and WaitProcess are not; a client of Processes.Connect
// is observed too.
func TestAgentCallObserver(t *testing.T) {
	ctx := ctxT(t, 60*time.Second)
	dir := sandboxDir(t)
	var obs agentCalls
	p := Processes{AgentCalls: obs.observe}
	conn, err := p.Spawn(ctx, SpawnOptions{Dir: dir, Backend: fakeBackend, Spec: fakeSpec(dir, agentBin)})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := conn.Start(ctx, 30*time.Second); err != nil {
		t.Fatal(err)
	}
	if _, err := conn.State(ctx); err != nil {
		t.Fatal(err)
	}
	if got := obs.take(); len(got) != 0 {
		t.Errorf("shim calls observed as agent calls: %v", got)
	}
	if _, err := conn.Agent().Ping(ctx, &agentapi.PingRequest{}); err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Agent().SignalProcess(ctx, &agentapi.SignalProcessRequest{Id: &agentapi.ProcessID{ContainerId: "nosuch"}, Signal: 15}); !errdefs.IsNotFound(err) {
		t.Errorf("SignalProcess of no process: %v", err)
	}
	wctx, cancel := context.WithTimeout(ctx, time.Second)
	conn.Agent().WaitProcess(wctx, &agentapi.WaitProcessRequest{Id: &agentapi.ProcessID{ContainerId: "nosuch"}})
	cancel()
	if got := obs.take(); len(got) != 2 || got[0] != "Ping" || got[1] != "SignalProcess!" {
		t.Errorf("observed %v, want [Ping SignalProcess!]", got)
	}

	c2, err := p.Connect(ctx, dir)
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	if _, err := c2.Agent().Ping(ctx, &agentapi.PingRequest{}); err != nil {
		t.Fatal(err)
	}
	if _, err := c2.Shim().ProcessStatus(ctx, &shimapi.ProcessStatusRequest{ContainerId: "nosuch"}); err == nil {
		t.Error("ProcessStatus of no process answered")
	}
	if got := obs.take(); len(got) != 1 || got[0] != "Ping" {
		t.Errorf("observed through Connect %v, want [Ping]", got)
	}
	// A plain Connect observes nothing.
	c3, err := Connect(ctx, dir)
	if err != nil {
		t.Fatal(err)
	}
	defer c3.Close()
	c3.Agent().Ping(ctx, &agentapi.PingRequest{})
	if got := obs.take(); len(got) != 0 {
		t.Errorf("a plain Connect's calls observed: %v", got)
	}
	if err := conn.Shutdown(ctx); err != nil {
		t.Error(err)
	}
}

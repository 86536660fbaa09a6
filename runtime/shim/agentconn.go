package shim

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"time"

	"github.com/containerd/ttrpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/macvz/macvz/internal/guard"
	"github.com/macvz/macvz/runtime/agentapi"
	"github.com/macvz/macvz/runtime/vm"
)

// Timing of the agent connection.
var (
	// keepaliveInterval: how often an idle-looking connection is pinged.
	keepaliveInterval = 5 * time.Second
	// keepaliveTimeout: a ping slower than this drops the connection (a
	// guest whose agent restarted never answers the old session).
	keepaliveTimeout = 15 * time.Second
	// dialPingTimeout bounds the first ping of a new connection.
	dialPingTimeout = 10 * time.Second
	// linkRetry: how often LinkClient repeats its HELLO.
	linkRetry = 20 * time.Millisecond
)

// ErrNoAgent is what every agent call of a VM started without an agent
// answers (FailedPrecondition): the VM itself runs, nothing in it
// answers.
var ErrNoAgent = errors.New("the VM runs without the macvz guest agent (its pod says its image has none: annotation macvz.io/agent=none or the runtime handler's agent = \"none\"): exec, attach, port-forward, exec probes, container processes and guest stats need the agent; put it into the VM image with `macvz image install-agent`")

// agentSession is one ttrpc connection to the guest agent.
type agentSession struct {
	tc     *ttrpc.Client
	api    agentapi.AgentClient
	closed chan struct{} // closed once the connection is gone
	n      int           // sequence number, for logs
}

func (s *agentSession) isClosed() bool {
	select {
	case <-s.closed:
		return true
	default:
		return false
	}
}

// agentConn is the shim's connection to the guest agent, the only one
// there is (the QEMU channel is a single byte stream). It dials on
// demand, pings to notice a dead peer and reconnects after a drop while
// the VM runs.
type agentConn struct {
	log  *slog.Logger
	m    vm.Machine
	link bool // agentapi link framing on the channel
	ctx  context.Context

	mu        sync.Mutex
	cur       *agentSession
	dialing   chan struct{} // closed when the dial in progress ends
	n         int
	suspended string // why no connection may be made (the VM is paused)
	changed   chan struct{}
}

func newAgentConn(ctx context.Context, log *slog.Logger, m vm.Machine, link bool) *agentConn {
	a := &agentConn{log: log, m: m, link: link, ctx: ctx, changed: make(chan struct{})}
	guard.Go(log, "agent keepalive", a.keepalive)
	go func() {
		select {
		case <-m.Done():
		case <-ctx.Done():
		}
		a.drop(nil)
	}()
	return a
}

// connected reports whether a live connection exists.
func (a *agentConn) connected() bool {
	select {
	case <-a.m.Done():
		// A stopped VM's channel may take a moment to report its
		// close; its agent is gone either way.
		return false
	default:
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.cur != nil && !a.cur.isClosed()
}

// current returns the live session or nil, without dialing.
func (a *agentConn) current() *agentSession {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.cur != nil && !a.cur.isClosed() {
		return a.cur
	}
	return nil
}

// vmStopped reports whether the VM has stopped for good.
func (a *agentConn) vmStopped() bool { return a.m.State() == vm.StateStopped }

// vmNotRunning is a status error for calls that need a running VM.
func (a *agentConn) vmNotRunning() error {
	st := a.m.State()
	msg := fmt.Sprintf("the VM is %s", st)
	if st == vm.StateStopped {
		if r := a.m.Exit().Reason; r != "" {
			msg += " (" + r + ")"
		}
	}
	return status.Error(codes.FailedPrecondition, msg)
}

// get returns a live session, dialing (and retrying) until ctx ends.
func (a *agentConn) get(ctx context.Context) (*agentSession, error) {
	backoff := 10 * time.Millisecond
	var lastErr error
	for {
		a.mu.Lock()
		if a.cur != nil && !a.cur.isClosed() {
			s := a.cur
			a.mu.Unlock()
			return s, nil
		}
		if a.m.State() != vm.StateRunning {
			a.mu.Unlock()
			return nil, a.vmNotRunning()
		}
		if a.suspended != "" {
			why := a.suspended
			a.mu.Unlock()
			return nil, status.Error(codes.FailedPrecondition, why)
		}
		if a.ctx.Err() != nil {
			a.mu.Unlock()
			return nil, status.Error(codes.Unavailable, "the shim is shutting down")
		}
		if ch := a.dialing; ch != nil {
			a.mu.Unlock()
			select {
			case <-ch:
				continue
			case <-ctx.Done():
				return nil, a.dialErr(ctx, lastErr)
			}
		}
		ch := make(chan struct{})
		a.dialing = ch
		a.n++
		n := a.n
		a.mu.Unlock()

		s, err := a.dial(ctx, n)

		a.mu.Lock()
		a.dialing = nil
		if err == nil {
			if a.suspended != "" || a.m.State() != vm.StateRunning {
				s.tc.Close()
				err = errors.New("the VM stopped or paused while connecting")
			} else {
				a.cur = s
				close(a.changed)
				a.changed = make(chan struct{})
			}
		}
		close(ch)
		a.mu.Unlock()
		if err == nil {
			a.log.Info("agent connected", "session", n)
			guard.Go(a.log, "agent connection watch", func() { a.watchSession(s) })
			return s, nil
		}
		lastErr = err
		a.log.Debug("agent dial failed", "err", err)
		t := time.NewTimer(backoff)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return nil, a.dialErr(ctx, lastErr)
		case <-a.m.Done():
			t.Stop()
		}
		backoff = min(2*backoff, 500*time.Millisecond)
	}
}

func (a *agentConn) dialErr(ctx context.Context, last error) error {
	if a.m.State() != vm.StateRunning {
		return a.vmNotRunning()
	}
	code := codes.Unavailable
	if errors.Is(ctx.Err(), context.DeadlineExceeded) {
		code = codes.DeadlineExceeded
	}
	if last != nil {
		return status.Errorf(code, "the guest agent does not answer: %v (last attempt: %v)", ctx.Err(), last)
	}
	return status.Errorf(code, "the guest agent does not answer: %v", ctx.Err())
}

// dial makes one connection attempt: DialAgent, the link handshake if
// the channel needs it, and a ping.
func (a *agentConn) dial(ctx context.Context, n int) (*agentSession, error) {
	// Give up when the VM stops.
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stop := context.AfterFunc(a.ctx, cancel)
	defer stop()
	go func() {
		select {
		case <-a.m.Done():
			cancel()
		case <-ctx.Done():
		}
	}()

	c, err := a.m.DialAgent(ctx)
	if err != nil {
		return nil, err
	}
	var conn net.Conn = c
	if a.link {
		conn, err = agentapi.LinkClient(ctx, c, linkRetry)
		if err != nil {
			c.Close()
			return nil, err
		}
	}
	s := &agentSession{closed: make(chan struct{}), n: n}
	s.tc = ttrpc.NewClient(conn, ttrpc.WithOnClose(func() { close(s.closed) }))
	s.api = agentapi.NewAgentClient(s.tc)
	pctx, pcancel := context.WithTimeout(ctx, dialPingTimeout)
	defer pcancel()
	if _, err := s.api.Ping(pctx, &agentapi.PingRequest{HostTimeUnixNano: time.Now().UnixNano()}); err != nil {
		s.tc.Close()
		return nil, fmt.Errorf("ping: %w", err)
	}
	return s, nil
}

// watchSession logs a lost connection and reconnects while the VM runs.
func (a *agentConn) watchSession(s *agentSession) {
	<-s.closed
	a.mu.Lock()
	if a.cur == s {
		a.cur = nil
		close(a.changed)
		a.changed = make(chan struct{})
	}
	a.mu.Unlock()
	if a.ctx.Err() != nil {
		return
	}
	a.log.Info("agent connection closed", "session", s.n)
	// A VM that is going away takes its channel first.
	t := time.NewTimer(200 * time.Millisecond)
	select {
	case <-a.m.Done():
	case <-a.ctx.Done():
	case <-t.C:
	}
	t.Stop()
	for a.ctx.Err() == nil && a.m.State() == vm.StateRunning && !a.connected() {
		a.mu.Lock()
		suspended := a.suspended != ""
		a.mu.Unlock()
		if suspended {
			return
		}
		a.log.Warn("agent connection lost; reconnecting")
		ctx, cancel := context.WithTimeout(a.ctx, time.Minute)
		_, err := a.get(ctx)
		cancel()
		if err == nil {
			return
		}
		if st, ok := status.FromError(err); ok && st.Code() == codes.FailedPrecondition {
			return // stopped or paused
		}
		a.log.Warn("reconnecting to the agent", "err", err)
	}
}

// keepalive pings the agent; a ping that times out drops the connection
// (the reconnect starts a new session).
func (a *agentConn) keepalive() {
	t := time.NewTicker(keepaliveInterval)
	defer t.Stop()
	for {
		select {
		case <-a.ctx.Done():
			return
		case <-a.m.Done():
			return
		case <-t.C:
		}
		s := a.current()
		if s == nil {
			continue
		}
		ctx, cancel := context.WithTimeout(a.ctx, keepaliveTimeout)
		_, err := s.api.Ping(ctx, &agentapi.PingRequest{HostTimeUnixNano: time.Now().UnixNano()})
		cancel()
		if err != nil && !s.isClosed() && a.ctx.Err() == nil && a.m.State() == vm.StateRunning {
			a.log.Warn("the agent does not answer pings; dropping the connection", "session", s.n, "err", err)
			s.tc.Close()
		}
	}
}

// drop closes the current connection. With a reason, no new one is made
// until resume (a paused VM cannot answer).
func (a *agentConn) drop(suspend error) {
	a.mu.Lock()
	if suspend != nil {
		a.suspended = suspend.Error()
	}
	s := a.cur
	// Forgotten now, not when its close is noticed: a call right after
	// the drop must not be sent over the closing connection (it would
	// fail with a bare "closed" instead of the reason).
	if s != nil {
		a.cur = nil
		close(a.changed)
		a.changed = make(chan struct{})
	}
	a.mu.Unlock()
	if s != nil {
		s.tc.Close()
	}
}

// resume allows connections again after a drop with a reason.
func (a *agentConn) resume() {
	a.mu.Lock()
	a.suspended = ""
	a.mu.Unlock()
}

// waitChange returns a channel closed at the next connect or disconnect.
func (a *agentConn) waitChange() <-chan struct{} {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.changed
}

package vz

import (
	"context"
	"errors"
	"net"
	"testing"
	"time"
)

// closeConn is a net.Conn that records its Close.
type closeConn struct {
	net.Conn
	closed chan struct{}
}

func (c *closeConn) Close() error { close(c.closed); return nil }

func TestDialContext(t *testing.T) {
	// Connected in time: the connection is the caller's.
	c := &closeConn{closed: make(chan struct{})}
	got, err := dialContext(context.Background(), func() (*closeConn, error) { return c, nil })
	if err != nil || got != net.Conn(c) {
		t.Fatalf("connected: %v %v", got, err)
	}

	// A failed connect is its error, never a non-nil conn holding a nil
	// pointer.
	boom := errors.New("connection refused")
	got, err = dialContext(context.Background(), func() (*closeConn, error) { return nil, boom })
	if !errors.Is(err, boom) || got != nil {
		t.Fatalf("failed connect: %#v %v", got, err)
	}

	// A connect that hangs: the caller is answered when its context
	// ends, and the connection that comes late is closed.
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	release := make(chan struct{})
	late := &closeConn{closed: make(chan struct{})}
	start := time.Now()
	got, err = dialContext(ctx, func() (*closeConn, error) { <-release; return late, nil })
	if !errors.Is(err, context.DeadlineExceeded) || got != nil {
		t.Fatalf("stuck connect: %v %v", got, err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("stuck connect answered after %v", d)
	}
	close(release)
	select {
	case <-late.closed:
	case <-time.After(5 * time.Second):
		t.Error("the late connection was not closed")
	}

	// A context already done does not connect at all.
	done, cancel2 := context.WithCancel(context.Background())
	cancel2()
	called := false
	if _, err := dialContext(done, func() (*closeConn, error) { called = true; return nil, nil }); !errors.Is(err, context.Canceled) || called {
		t.Errorf("done context: %v, connect called %v", err, called)
	}
}

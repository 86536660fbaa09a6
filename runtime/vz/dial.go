package vz

import (
	"context"
	"fmt"
	"net"
)

// dialContext runs connect, which cannot be cancelled (the framework's
// vsock connect has no timeout of its own, and a guest that never
// answers leaves it waiting), so that the caller is answered when ctx
// ends: the boot's wait for the agent must stay bounded by its timeout.
// A connection that comes after the caller gave up is closed.
func dialContext[C net.Conn](ctx context.Context, connect func() (C, error)) (net.Conn, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	type result struct {
		c   C
		err error
	}
	ch := make(chan result, 1)
	go func() {
		c, err := connect()
		ch <- result{c, err}
	}()
	select {
	case r := <-ch:
		if r.err != nil {
			return nil, r.err
		}
		return r.c, nil
	case <-ctx.Done():
		go func() {
			if r := <-ch; r.err == nil {
				r.c.Close()
			}
		}()
		return nil, fmt.Errorf("connecting to the guest agent's vsock port: %w", ctx.Err())
	}
}

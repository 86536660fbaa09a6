// Package guestfwd serves clients inside a VM from the host: the agent
// listens on a socket in the guest (agentapi.AcceptGuest), and each guest
// client is relayed, over the VM's private agent channel, to a connection
// the host makes. The node VM's kubelet reaches the daemon's CRI socket
// and streaming server so; nothing of it is on any network.
package guestfwd

import (
	"context"
	"log/slog"
	"net"
	"sync"
	"time"

	"github.com/macvz/macvz/internal/relay"
	"github.com/macvz/macvz/runtime/agentapi"
)

// Forward is one guest socket served from the host.
type Forward struct {
	// Listen is the guest socket: "unix:/run/macvz/<name>" or
	// "tcp:127.0.0.1:<port>" (see agentapi.PortForwardFrame).
	Listen string
	// Dial makes the host end of a guest client's connection.
	Dial func(ctx context.Context) (net.Conn, error)
}

// Backoff bounds the waits between failed attempts to reach the agent.
var Backoff = struct{ Min, Max time.Duration }{200 * time.Millisecond, 5 * time.Second}

// Serve keeps one tunnel waiting for the next guest client of f.Listen
// and relays each client to a host connection from f.Dial, until ctx
// ends; then it waits for the relays it started. A client whose host
// connection fails is closed (the guest sees its connection end). An
// agent that cannot be reached is retried with back-off: a VM that
// restarts gets its socket again.
func Serve(ctx context.Context, log *slog.Logger, agent agentapi.AgentClient, f Forward) {
	log = log.With("guest_socket", f.Listen)
	var wg sync.WaitGroup
	defer wg.Wait()
	wait := Backoff.Min
	for ctx.Err() == nil {
		conn, err := agentapi.AcceptGuest(ctx, agent, f.Listen)
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			log.Warn("waiting for a guest client failed; retrying", "error", err, "in", wait)
			select {
			case <-ctx.Done():
				return
			case <-time.After(wait):
			}
			wait = min(2*wait, Backoff.Max)
			continue
		}
		wait = Backoff.Min
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer conn.Close()
			host, err := f.Dial(ctx)
			if err != nil {
				log.Warn("a guest client's host connection failed", "error", err)
				return
			}
			defer host.Close()
			stop := context.AfterFunc(ctx, func() { conn.Close(); host.Close() })
			defer stop()
			relay.Both(conn, host)
		}()
	}
}

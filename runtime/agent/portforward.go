package agent

import (
	"context"
	"errors"
	"net"
	"strconv"
	"sync"
	"time"

	"google.golang.org/grpc/codes"

	api "github.com/macvz/macvz/runtime/agentapi"
)

// PortForward tunnels a stream to a TCP port on the guest's loopback, or
// from a guest client of a socket the agent listens on; see
// api.PortForwardFrame for the flow control.
func (a *agent) PortForward(ctx context.Context, stream api.Agent_PortForwardServer) error {
	first, err := stream.Recv()
	if err != nil {
		return err
	}
	window := uint64(first.Window)
	if window == 0 || window > defaultWindow {
		window = defaultWindow
	}
	conn, err := a.forwardConn(ctx, first)
	if err != nil {
		return err
	}
	defer conn.Close()
	halfCloser, _ := conn.(interface{ CloseWrite() error })

	var sendMu sync.Mutex
	send := func(f *api.PortForwardFrame) error {
		sendMu.Lock()
		defer sendMu.Unlock()
		return stream.Send(f)
	}
	if err := send(&api.PortForwardFrame{}); err != nil {
		return err
	}

	var (
		mu       sync.Mutex
		changed  = make(chan struct{})
		peerAck  uint64
		sent     uint64
		inflight []uint64
	)
	notify := func() {
		close(changed)
		changed = make(chan struct{})
	}
	clientDone := make(chan struct{})
	// client -> guest
	go func() {
		defer close(clientDone)
		// The client ended the stream (or it broke): end the guest side,
		// which ends the loop below.
		defer conn.Close()
		var received, acked uint64
		chunks := 0
		for {
			f, err := stream.Recv()
			if err != nil {
				return
			}
			if f.Ack > 0 {
				mu.Lock()
				if f.Ack > peerAck {
					peerAck = min(f.Ack, sent)
					for len(inflight) > 0 && inflight[0] <= peerAck {
						inflight = inflight[1:]
					}
					notify()
				}
				mu.Unlock()
			}
			if len(f.Data) > 0 {
				if _, err := conn.Write(f.Data); err != nil {
					return
				}
				received += uint64(len(f.Data))
				chunks++
				if received-acked >= window/4 || chunks >= maxInFlightChunks/4 {
					if send(&api.PortForwardFrame{Ack: received}) != nil {
						return
					}
					acked, chunks = received, 0
				}
			}
			if f.CloseWrite && halfCloser != nil {
				halfCloser.CloseWrite()
			}
		}
	}()
	// guest -> client
	buf := make([]byte, maxChunk)
	for {
		mu.Lock()
		for sent-peerAck >= window || len(inflight) >= maxInFlightChunks {
			ch := changed
			mu.Unlock()
			select {
			case <-ch:
			case <-clientDone:
				return nil
			case <-ctx.Done():
				return ctx.Err()
			}
			mu.Lock()
		}
		room := min(window-(sent-peerAck), uint64(len(buf)))
		mu.Unlock()
		n, err := conn.Read(buf[:room])
		if n > 0 {
			mu.Lock()
			sent += uint64(n)
			inflight = append(inflight, sent)
			mu.Unlock()
			if serr := send(&api.PortForwardFrame{Data: append([]byte(nil), buf[:n]...)}); serr != nil {
				return serr
			}
		}
		if err != nil {
			select {
			case <-clientDone:
				// The client went away (or closed everything): nothing to say.
				return nil
			default:
			}
			if errors.Is(err, net.ErrClosed) {
				return nil
			}
			// The guest side ended: tell the client. A guest port's
			// server has said all it will: end the stream. A guest client
			// (listen) may only have half-closed after its request: its
			// answer is still coming, until the host ends the stream.
			send(&api.PortForwardFrame{CloseWrite: true})
			if first.Listen != "" {
				select {
				case <-clientDone:
				case <-ctx.Done():
				}
			}
			return nil
		}
	}
}

// forwardConn is the guest end of a PortForward stream whose first frame
// is first: a connection to localhost's port, or the next guest client
// of the listen socket.
func (a *agent) forwardConn(ctx context.Context, first *api.PortForwardFrame) (net.Conn, error) {
	if first.Listen != "" {
		if first.Port != 0 {
			return nil, errf(codes.InvalidArgument, "PortForward: a frame with both port %d and listen %q", first.Port, first.Listen)
		}
		l, err := a.guestListener(first.Listen)
		if err != nil {
			return nil, err
		}
		return l.accept(ctx)
	}
	if first.Port == 0 || first.Port > 65535 {
		return nil, errf(codes.InvalidArgument, "PortForward: invalid port %d", first.Port)
	}
	port := strconv.Itoa(int(first.Port))
	var d net.Dialer
	dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	conn, err := d.DialContext(dctx, "tcp4", net.JoinHostPort("127.0.0.1", port))
	if err != nil {
		var err6 error
		conn, err6 = d.DialContext(dctx, "tcp6", net.JoinHostPort("::1", port))
		if err6 != nil {
			return nil, errf(codes.Unavailable, "PortForward: connecting to localhost:%s in the guest: %v", port, err)
		}
	}
	return conn, nil
}

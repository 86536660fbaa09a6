package agent

import (
	"context"
	"errors"
	"io"
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
	// client -> guest. The receive loop never waits on the guest
	// connection: acks are taken at once (the guest -> client loop below
	// may be waiting for one while the guest does not read), data goes to
	// in, which a writer drains into the guest connection, acknowledging
	// what it wrote.
	in := newPFInbound(window)
	clientDone := make(chan struct{})
	go func() {
		defer close(clientDone)
		// The client ended the stream (or it broke): end the guest side,
		// which ends the loop below.
		defer conn.Close()
		var written, acked uint64
		chunks := 0
		for {
			data, eof, _ := in.next()
			switch {
			case data != nil:
				if _, err := conn.Write(data); err != nil {
					return
				}
				written += uint64(len(data))
				chunks++
				if written-acked >= window/4 || chunks >= maxInFlightChunks/4 {
					if send(&api.PortForwardFrame{Ack: written}) != nil {
						return
					}
					acked, chunks = written, 0
				}
			case eof:
				if halfCloser != nil {
					halfCloser.CloseWrite()
				}
			default:
				return
			}
		}
	}()
	go func() {
		for {
			f, err := stream.Recv()
			if err != nil {
				// Ended by the client (CloseSend): what it sent still
				// reaches the guest. Broken: nothing will.
				in.finish(err)
				if !errors.Is(err, io.EOF) {
					conn.Close()
				}
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
				if err := in.push(f.Data); err != nil {
					// The client broke the protocol: end it all.
					in.finish(err)
					conn.Close()
					return
				}
			}
			if f.CloseWrite {
				in.closeWrite()
			}
		}
	}()
	// result is what the stream ends with: err, unless the client broke
	// the protocol.
	result := func(err error) error {
		if v := in.violation(); v != nil {
			return v
		}
		return err
	}
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
				return result(nil)
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
				return result(nil)
			default:
			}
			if errors.Is(err, net.ErrClosed) {
				return result(nil)
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
			return result(nil)
		}
	}
}

// forwardConn is the guest end of a PortForward stream whose first frame
// is first: a connection to localhost's port or to a guest socket (dial),
// or the next guest client of the listen socket.
func (a *agent) forwardConn(ctx context.Context, first *api.PortForwardFrame) (net.Conn, error) {
	if n := btoi(first.Port != 0) + btoi(first.Listen != "") + btoi(first.Dial != ""); n > 1 {
		return nil, errf(codes.InvalidArgument, "PortForward: a frame with more than one of port %d, listen %q and dial %q", first.Port, first.Listen, first.Dial)
	}
	if first.Dial != "" {
		path, err := a.dialAddr(first.Dial)
		if err != nil {
			return nil, err
		}
		var d net.Dialer
		dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		conn, err := d.DialContext(dctx, "unix", path)
		if err != nil {
			return nil, errf(codes.Unavailable, "PortForward: connecting to %s in the guest: %v", path, err)
		}
		return conn, nil
	}
	if first.Listen != "" {
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

// pfInbound is the data a PortForward client sent for the guest
// connection, between the stream's receive loop and the writer into the
// guest connection. The client sends at most the window beyond the
// agent's last ack, and the agent acks only what it has written, so the
// queue stays within the window; a client that sends more breaks the
// protocol.
type pfInbound struct {
	window uint64

	mu      sync.Mutex
	changed chan struct{} // closed and renewed on every change
	queue   [][]byte
	queued  uint64
	eof     bool  // close_write came: no data after the queue
	eofTold bool  // next has returned it
	end     error // the stream ended (io.EOF: the client ended it)
	broken  error // the client sent beyond the window
}

func newPFInbound(window uint64) *pfInbound {
	return &pfInbound{window: window, changed: make(chan struct{})}
}

func (q *pfInbound) notifyLocked() {
	close(q.changed)
	q.changed = make(chan struct{})
}

// push queues data for the guest; an error when it would take the queue
// beyond the window. Data after close_write is dropped.
func (q *pfInbound) push(data []byte) error {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.eof || q.end != nil {
		return nil
	}
	if q.queued+uint64(len(data)) > q.window {
		q.broken = errf(codes.InvalidArgument, "PortForward: the client sent %d bytes beyond the agent's acknowledgement, more than the window of %d", q.queued+uint64(len(data)), q.window)
		return q.broken
	}
	q.queue = append(q.queue, data)
	q.queued += uint64(len(data))
	q.notifyLocked()
	return nil
}

// closeWrite records the client's close_write.
func (q *pfInbound) closeWrite() {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.eof = true
	q.notifyLocked()
}

// finish records the end of the stream (err, never nil).
func (q *pfInbound) finish(err error) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.end == nil {
		q.end = err
	}
	q.notifyLocked()
}

// next waits for what the writer does next: write data, half-close the
// guest connection (eof, once, after all data), or stop (end: the stream
// ended and, when the client ended it, all its data was taken; or the
// client broke the protocol).
func (q *pfInbound) next() (data []byte, eof bool, end error) {
	q.mu.Lock()
	defer q.mu.Unlock()
	for {
		if q.broken != nil {
			return nil, false, q.broken
		}
		if q.end != nil && !errors.Is(q.end, io.EOF) {
			return nil, false, q.end
		}
		if len(q.queue) > 0 {
			data = q.queue[0]
			q.queue[0] = nil
			q.queue = q.queue[1:]
			q.queued -= uint64(len(data))
			return data, false, nil
		}
		if q.eof && !q.eofTold {
			q.eofTold = true
			return nil, true, nil
		}
		if q.end != nil {
			return nil, false, q.end
		}
		ch := q.changed
		q.mu.Unlock()
		<-ch
		q.mu.Lock()
	}
}

// violation is the client's breach of the protocol, nil when none.
func (q *pfInbound) violation() error {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.broken
}

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}

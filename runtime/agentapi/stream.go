package agentapi

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"sync"
	"time"

	"github.com/containerd/errdefs"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Flow-control constants shared by the agent and these helpers.
const (
	// DefaultWindow is the default and largest window of ReadOutput and
	// PortForward streams.
	DefaultWindow = 1 << 20
	// ackChunks: acknowledge at least every this many messages (the
	// agent keeps at most 32 unacknowledged messages in flight).
	ackChunks = 8
)

// OutputReader reads one output stream of a process (ReadOutput) as an
// io.Reader, acknowledging what it has consumed. Read returns io.EOF once
// the process's side is closed and everything was read.
type OutputReader struct {
	stream Agent_ReadOutputClient
	cancel context.CancelFunc
	window uint64

	mu       sync.Mutex
	pending  []byte
	offset   uint64 // offset of pending[0]; after it, of the next byte
	acked    uint64
	unacked  int // messages since the last ack
	err      error
	closeOne sync.Once
}

// OpenOutput starts reading stdio of the process id. from acknowledges the
// output before that offset (what an earlier reader already got; 0 for a
// first reader). The stream ends when ctx does.
func OpenOutput(ctx context.Context, c AgentClient, id *ProcessID, stdio Stdio, from uint64) (*OutputReader, error) {
	ctx, cancel := context.WithCancel(ctx)
	s, err := c.ReadOutput(ctx)
	if err != nil {
		cancel()
		return nil, err
	}
	if err := s.Send(&OutputRequest{Id: id, Stdio: stdio, Window: DefaultWindow, Ack: from}); err != nil {
		cancel()
		return nil, err
	}
	return &OutputReader{stream: s, cancel: cancel, window: DefaultWindow, offset: from, acked: from}, nil
}

// Offset is the offset in the process's output of the next byte Read
// returns.
func (r *OutputReader) Offset() uint64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.offset
}

func (r *OutputReader) Read(p []byte) (int, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for len(r.pending) == 0 {
		if r.err != nil {
			return 0, r.err
		}
		if err := r.ackLocked(false); err != nil {
			r.err = err
			return 0, err
		}
		m, err := r.stream.Recv()
		if err != nil {
			r.err = err
			return 0, err
		}
		r.unacked++
		// Offsets come from the guest: a chunk that would end past the
		// largest offset wraps the reader's count, which only moves on.
		if m.Offset > math.MaxUint64-uint64(len(m.Data)) {
			r.err = fmt.Errorf("the guest agent sent %d bytes of output at offset %d, past the end of any stream: %w", len(m.Data), m.Offset, errdefs.ErrOutOfRange)
			return 0, r.err
		}
		if m.Offset > r.offset {
			// Output was freed before we got it (another reader acked it).
			r.offset = m.Offset
		}
		skip := r.offset - m.Offset
		if skip < uint64(len(m.Data)) {
			r.pending = m.Data[skip:]
		}
	}
	n := copy(p, r.pending)
	r.pending = r.pending[n:]
	r.offset += uint64(n)
	return n, nil
}

// ackLocked acknowledges what was consumed when it is worth a message
// (or always, with force).
func (r *OutputReader) ackLocked(force bool) error {
	if r.offset == r.acked {
		return nil
	}
	if !force && r.offset-r.acked < r.window/4 && r.unacked < ackChunks {
		return nil
	}
	if err := r.stream.Send(&OutputRequest{Ack: r.offset}); err != nil {
		return err
	}
	r.acked, r.unacked = r.offset, 0
	return nil
}

// Close acknowledges what was read, detaches from the stream (the agent
// keeps the rest for the next reader) and waits for the stream to end.
func (r *OutputReader) Close() error {
	r.closeOne.Do(func() {
		r.mu.Lock()
		if r.err == nil {
			r.ackLocked(true)
			r.stream.CloseSend()
			// Drain until the agent ends the stream.
			timer := time.AfterFunc(5*time.Second, r.cancel)
			for {
				if _, err := r.stream.Recv(); err != nil {
					break
				}
			}
			timer.Stop()
			r.err = io.ErrClosedPipe
		}
		r.mu.Unlock()
		r.cancel()
	})
	return nil
}

// maxQueuedChunks bounds the data frames a ForwardConn holds unread: the
// agent never has more than 32 unacknowledged chunks in flight.
const maxQueuedChunks = 64

// ForwardConn is a PortForward stream as a connection: to a TCP port on
// the guest's localhost (DialPort), to a guest unix socket (DialGuest)
// or from a guest client (AcceptGuest).
// CloseWrite half-closes it; Close ends it.
//
// A goroutine receives the stream's frames as they come: acks open the
// window for Write whether or not anyone reads, and data waits in a queue
// for Read. The queue stays within the window, as Read acks only what it
// has consumed. So a writer never waits on a reader, and a relay copying
// both ways (the peer echoing what it gets) cannot deadlock.
type ForwardConn struct {
	stream Agent_PortForwardClient
	cancel context.CancelFunc
	window uint64

	sendMu sync.Mutex

	mu       sync.Mutex
	changed  chan struct{} // closed and renewed on every change below
	peerAck  uint64
	sent     uint64
	inflight []uint64
	closed   bool
	failed   error    // the stream broke
	queue    [][]byte // data received, not yet read
	eof      bool     // the peer's close_write came (after queue)
	received uint64   // data bytes received
	consumed uint64   // bytes Read returned
	acked    uint64   // the last ack sent
	unacked  int      // chunks consumed since it
	recvDone chan struct{}
}

func newForwardConn(s Agent_PortForwardClient, cancel context.CancelFunc) *ForwardConn {
	c := &ForwardConn{stream: s, cancel: cancel, window: DefaultWindow, changed: make(chan struct{}), recvDone: make(chan struct{})}
	go c.receive()
	return c
}

// notifyLocked wakes everything waiting on a change (mu held).
func (c *ForwardConn) notifyLocked() {
	close(c.changed)
	c.changed = make(chan struct{})
}

// receive takes the stream's frames until it ends.
func (c *ForwardConn) receive() {
	defer close(c.recvDone)
	for {
		f, err := c.stream.Recv()
		c.mu.Lock()
		if err != nil {
			if c.failed == nil {
				c.failed = err
			}
			c.notifyLocked()
			c.mu.Unlock()
			return
		}
		if f.Ack > c.peerAck {
			c.peerAck = min(f.Ack, c.sent)
			for len(c.inflight) > 0 && c.inflight[0] <= c.peerAck {
				c.inflight = c.inflight[1:]
			}
		}
		// Data after close_write breaks the protocol: dropped.
		if len(f.Data) > 0 && !c.eof {
			// The guest is not trusted: an agent that sends beyond the
			// window (or more chunks than it may have in flight) would
			// grow the queue without bound. It ends the tunnel.
			c.received += uint64(len(f.Data))
			if c.received-c.acked > c.window || len(c.queue) >= maxQueuedChunks {
				c.failed = status.Errorf(codes.InvalidArgument, "port-forward: the guest sent %d bytes in %d chunks beyond what was acknowledged, more than the window of %d bytes allows",
					c.received-c.acked, len(c.queue)+1, c.window)
				c.notifyLocked()
				c.mu.Unlock()
				c.cancel()
				return
			}
			c.queue = append(c.queue, f.Data)
		}
		if f.CloseWrite {
			c.eof = true
		}
		c.notifyLocked()
		c.mu.Unlock()
	}
}

// DialPort opens a tunnel to 127.0.0.1:port (or [::1]:port) in the guest.
// It returns once the agent has connected.
func DialPort(ctx context.Context, c AgentClient, port uint16) (*ForwardConn, error) {
	return openForward(ctx, c, &PortForwardFrame{Port: uint32(port), Window: DefaultWindow})
}

// The node VM's kubelet's sockets the agent connects to for the host
// (DialGuest): kubelet's device-plugin registration socket, whose
// directory is fixed whatever kubelet's root dir, and its pod-resources
// socket under the node VM's root dir. KubeletPluginDir is where the
// agent may also listen for a device plugin's endpoint, on a name that
// starts with KubeletPluginPrefix.
const (
	KubeletPluginDir          = "/var/lib/kubelet/device-plugins"
	KubeletPluginPrefix       = "macvz-"
	KubeletRegistrationSocket = KubeletPluginDir + "/kubelet.sock"
	KubeletPodResourcesSocket = "/var/lib/kubelet/pod-resources/kubelet.sock"
)

// KubeletSockets are the guest sockets DialGuest may name.
var KubeletSockets = []string{KubeletRegistrationSocket, KubeletPodResourcesSocket}

// DialGuest opens a tunnel to a unix socket in the guest (addr
// "unix:<path>", one of KubeletSockets). It returns once the agent has
// connected.
func DialGuest(ctx context.Context, c AgentClient, addr string) (*ForwardConn, error) {
	return openForward(ctx, c, &PortForwardFrame{Dial: addr, Window: DefaultWindow})
}

// AcceptGuest waits for the next guest client of the socket listen
// ("unix:/run/macvz/<name>" or "tcp:127.0.0.1:<port>", which the agent
// listens on from the first call) and returns the tunnel to it; ctx
// bounds the wait.
func AcceptGuest(ctx context.Context, c AgentClient, listen string) (*ForwardConn, error) {
	return openForward(ctx, c, &PortForwardFrame{Listen: listen, Window: DefaultWindow})
}

// openForward opens a PortForward stream with first and returns it once
// the agent answers.
func openForward(ctx context.Context, c AgentClient, first *PortForwardFrame) (*ForwardConn, error) {
	sctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	s, err := c.PortForward(sctx)
	if err != nil {
		cancel()
		return nil, err
	}
	if err := s.Send(first); err != nil {
		cancel()
		return nil, err
	}
	type res struct {
		f   *PortForwardFrame
		err error
	}
	ch := make(chan res, 1)
	go func() {
		f, err := s.Recv()
		ch <- res{f, err}
	}()
	select {
	case r := <-ch:
		if r.err != nil {
			cancel()
			return nil, r.err
		}
	case <-ctx.Done():
		cancel()
		return nil, ctx.Err()
	}
	return newForwardConn(s, cancel), nil
}

func (c *ForwardConn) send(f *PortForwardFrame) error {
	c.sendMu.Lock()
	defer c.sendMu.Unlock()
	return c.stream.Send(f)
}

// Read returns received data; io.EOF once the peer closed its side and
// everything before was read.
func (c *ForwardConn) Read(p []byte) (int, error) {
	c.mu.Lock()
	for len(c.queue) == 0 {
		switch {
		case c.eof:
			c.mu.Unlock()
			return 0, io.EOF
		case c.failed != nil:
			err := c.failed
			c.mu.Unlock()
			return 0, err
		case c.closed:
			c.mu.Unlock()
			return 0, net.ErrClosed
		}
		ch := c.changed
		c.mu.Unlock()
		<-ch
		c.mu.Lock()
	}
	n := copy(p, c.queue[0])
	if c.queue[0] = c.queue[0][n:]; len(c.queue[0]) == 0 {
		c.queue = c.queue[1:]
		c.unacked++
	}
	c.consumed += uint64(n)
	var ack uint64
	if c.consumed-c.acked >= c.window/4 || (c.unacked >= ackChunks && c.consumed > c.acked) {
		ack, c.acked, c.unacked = c.consumed, c.consumed, 0
	}
	c.mu.Unlock()
	if ack > 0 {
		if err := c.send(&PortForwardFrame{Ack: ack}); err != nil {
			return n, err
		}
	}
	return n, nil
}

// Write sends p, waiting while the window is full.
func (c *ForwardConn) Write(p []byte) (int, error) {
	written := 0
	for len(p) > 0 {
		c.mu.Lock()
		for !c.closed && c.failed == nil && (c.sent-c.peerAck >= c.window || len(c.inflight) >= 32) {
			ch := c.changed
			c.mu.Unlock()
			<-ch
			c.mu.Lock()
		}
		if c.closed {
			c.mu.Unlock()
			return written, net.ErrClosed
		}
		if c.failed != nil {
			err := c.failed
			c.mu.Unlock()
			return written, err
		}
		n := int(min(uint64(len(p)), c.window-(c.sent-c.peerAck), 32<<10))
		c.sent += uint64(n)
		c.inflight = append(c.inflight, c.sent)
		c.mu.Unlock()
		if err := c.send(&PortForwardFrame{Data: p[:n]}); err != nil {
			return written, err
		}
		written += n
		p = p[n:]
	}
	return written, nil
}

// CloseWrite tells the guest side no more data comes (TCP half close).
func (c *ForwardConn) CloseWrite() error {
	return c.send(&PortForwardFrame{CloseWrite: true})
}

// Close ends the tunnel.
func (c *ForwardConn) Close() error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil
	}
	c.closed = true
	c.notifyLocked()
	c.mu.Unlock()
	err := c.stream.CloseSend()
	// Let the agent end the stream so the client forgets it, then cancel.
	go func() {
		select {
		case <-c.recvDone:
		case <-time.After(5 * time.Second):
		}
		c.cancel()
	}()
	if errors.Is(err, io.EOF) {
		err = nil
	}
	return err
}

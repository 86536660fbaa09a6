package agentapi

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/containerd/ttrpc"
)

// fakePort is a virtio-serial port: one byte stream in each direction that
// outlives host connections. The guest reads EOF while no host is
// connected (unless the test hides the disconnect).
type fakePort struct {
	mu        sync.Mutex
	cond      *sync.Cond
	toGuest   bytes.Buffer
	toHost    bytes.Buffer
	connected bool
	host      *fakeHost
	closed    bool
}

func newFakePort() *fakePort {
	p := &fakePort{}
	p.cond = sync.NewCond(&p.mu)
	return p
}

// guest side
func (p *fakePort) Read(b []byte) (int, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for p.toGuest.Len() == 0 {
		if p.closed {
			return 0, os.ErrClosed
		}
		if !p.connected {
			return 0, io.EOF
		}
		p.cond.Wait()
	}
	return p.toGuest.Read(b)
}

func (p *fakePort) Write(b []byte) (int, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.toHost.Write(b)
	p.cond.Broadcast()
	return len(b), nil
}

func (p *fakePort) Close() error {
	p.mu.Lock()
	p.closed = true
	p.cond.Broadcast()
	p.mu.Unlock()
	return nil
}

// connect attaches a new host connection; the previous one (if any) stops
// working without the guest being told when silent.
func (p *fakePort) connect() *fakeHost {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.host != nil {
		p.host.gone = true
	}
	h := &fakeHost{p: p}
	p.host = h
	p.connected = true
	p.cond.Broadcast()
	return h
}

// disconnect drops the host; the guest sees EOF once its buffer is read.
func (p *fakePort) disconnect() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.host != nil {
		p.host.gone = true
		p.host = nil
	}
	p.connected = false
	p.cond.Broadcast()
}

type fakeHost struct {
	p        *fakePort
	gone     bool
	deadline bool
}

type timeoutErr struct{}

func (timeoutErr) Error() string   { return "i/o timeout" }
func (timeoutErr) Timeout() bool   { return true }
func (timeoutErr) Temporary() bool { return true }

func (h *fakeHost) Read(b []byte) (int, error) {
	p := h.p
	p.mu.Lock()
	defer p.mu.Unlock()
	for p.toHost.Len() == 0 || h.gone {
		if h.gone {
			return 0, io.EOF
		}
		if h.deadline {
			return 0, timeoutErr{}
		}
		p.cond.Wait()
	}
	return p.toHost.Read(b)
}

func (h *fakeHost) Write(b []byte) (int, error) {
	p := h.p
	p.mu.Lock()
	defer p.mu.Unlock()
	if h.gone {
		return 0, io.ErrClosedPipe
	}
	p.toGuest.Write(b)
	p.cond.Broadcast()
	return len(b), nil
}

func (h *fakeHost) Close() error {
	h.p.mu.Lock()
	h.gone = true
	h.p.cond.Broadcast()
	h.p.mu.Unlock()
	return nil
}

func (h *fakeHost) LocalAddr() net.Addr  { return linkAddr("host") }
func (h *fakeHost) RemoteAddr() net.Addr { return linkAddr("guest") }
func (h *fakeHost) SetDeadline(t time.Time) error {
	return h.SetReadDeadline(t)
}
func (h *fakeHost) SetReadDeadline(t time.Time) error {
	h.p.mu.Lock()
	h.deadline = !t.IsZero()
	h.p.cond.Broadcast()
	h.p.mu.Unlock()
	return nil
}
func (h *fakeHost) SetWriteDeadline(time.Time) error { return nil }

// pingAgent answers Ping and nothing else.
type pingAgent struct {
	AgentService
	version string
}

func (p pingAgent) Ping(context.Context, *PingRequest) (*PingResponse, error) {
	return &PingResponse{AgentVersion: p.version}, nil
}

func serveFake(t *testing.T, port *fakePort) *LinkListener {
	l := NewLinkListener("fake", func() (io.ReadWriteCloser, error) { return port, nil }, 5*time.Millisecond)
	srv, err := ttrpc.NewServer()
	if err != nil {
		t.Fatal(err)
	}
	RegisterAgentService(srv, pingAgent{version: "test"})
	done := make(chan struct{})
	go func() {
		defer close(done)
		srv.Serve(context.Background(), l)
	}()
	t.Cleanup(func() {
		srv.Close()
		port.Close()
		<-done
	})
	return l
}

func dialFake(t *testing.T, h *fakeHost) (AgentClient, *ttrpc.Client) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := LinkClient(ctx, h, 10*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	tc := ttrpc.NewClient(c)
	return NewAgentClient(tc), tc
}

func ping(t *testing.T, c AgentClient, n int) {
	t.Helper()
	for range n {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		r, err := c.Ping(ctx, &PingRequest{})
		cancel()
		if err != nil || r.AgentVersion != "test" {
			t.Fatalf("Ping: %v %v", r, err)
		}
	}
}

func TestLinkReconnect(t *testing.T) {
	port := newFakePort()
	serveFake(t, port)

	// A clean session, then a clean disconnect (the guest sees EOF).
	c1, tc1 := dialFake(t, port.connect())
	ping(t, c1, 5)
	tc1.Close()
	port.disconnect()

	c2, tc2 := dialFake(t, port.connect())
	ping(t, c2, 5)

	// A reconnect the guest does not notice, with a half-written frame of
	// the old host left in the guest's input and stale agent output
	// (an old session's frame and a cut one) waiting for the new host.
	port.mu.Lock()
	port.toGuest.Write(appendFrame(nil, frameData, 12345, bytes.Repeat([]byte("x"), 4000))[:2000])
	stale := appendFrame(nil, frameData, 777, []byte("old response"))
	port.toHost.Write(stale)
	port.toHost.Write(appendFrame(nil, frameData, 777, bytes.Repeat([]byte("y"), 5000))[:3000])
	port.mu.Unlock()
	h3 := port.connect()
	tc2.Close()
	c3, tc3 := dialFake(t, h3)
	ping(t, c3, 5)
	tc3.Close()

	// And once more: the old ttrpc server connection is gone, stream ids
	// restart at 1 on the new client without trouble.
	c4, tc4 := dialFake(t, port.connect())
	defer tc4.Close()
	ping(t, c4, 3)
}

// The HELLO is repeated until the agent is there: data written before the
// guest opens its port is lost in the real device.
func TestLinkHostFirst(t *testing.T) {
	port := newFakePort()
	h := port.connect()
	got := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		c, err := LinkClient(ctx, h, 10*time.Millisecond)
		if err == nil {
			tc := ttrpc.NewClient(c)
			defer tc.Close()
			_, err = NewAgentClient(tc).Ping(ctx, &PingRequest{})
		}
		got <- err
	}()
	time.Sleep(50 * time.Millisecond)
	port.mu.Lock()
	port.toGuest.Reset() // the guest kernel dropped what came before open
	port.mu.Unlock()
	serveFake(t, port)
	if err := <-got; err != nil {
		t.Fatal(err)
	}
}

func TestLinkClientTimeout(t *testing.T) {
	port := newFakePort()
	h := port.connect()
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if _, err := LinkClient(ctx, h, 10*time.Millisecond); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("LinkClient without an agent: %v", err)
	}
}

// Big messages in both directions cross intact (frames are split at
// MaxLinkPayload) and garbage between frames is skipped.
func TestFrameReader(t *testing.T) {
	payload := make([]byte, 3*MaxLinkPayload+17)
	for i := range payload {
		payload[i] = byte(i * 7)
	}
	var stream []byte
	stream = append(stream, "garbage MVZL and more"...)
	stream = append(stream, handshake(frameHello, 9)...)
	stream = appendData(stream, 9, payload)
	stream = append(stream, linkMagic[:]...) // a lone magic
	stream = appendFrame(stream, frameData, 9, []byte("end"))
	fr := newFrameReader(&slowReader{b: stream})
	var got []byte
	var types []byte
	for {
		f, err := fr.next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		types = append(types, f.typ)
		if f.typ == frameData {
			got = append(got, f.payload...)
		}
	}
	if !bytes.Equal(got, append(payload, "end"...)) {
		t.Errorf("payload: got %d bytes", len(got))
	}
	if !bytes.Equal(types, []byte{frameHello, frameData, frameData, frameData, frameData, frameData}) {
		t.Errorf("frame types %v", types)
	}
}

// slowReader returns a few bytes at a time.
type slowReader struct{ b []byte }

func (r *slowReader) Read(p []byte) (int, error) {
	if len(r.b) == 0 {
		return 0, io.EOF
	}
	n := copy(p[:min(len(p), 1000)], r.b)
	r.b = r.b[n:]
	return n, nil
}

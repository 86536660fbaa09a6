package agentapi

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"net"
	"os"
	"sync"
	"time"

	"github.com/macvz/macvz/internal/guard"
)

// The link framing carries ttrpc over a byte stream that has no connection
// boundaries of its own: QEMU's virtio-serial port. The guest reads EOF
// while no host is connected, but it may miss a disconnect followed by a
// quick reconnect (or one just before a VM state is saved), and bytes of a
// previous host connection may still be in flight in either direction. A
// ttrpc server also refuses stream IDs that do not increase, so a new host
// client on an old server connection would fail every call.
//
// So every byte goes in a frame tagged with a session number that the host
// picks at random for each connection:
//
//	magic "MVZL" | type u8 | 3 zero bytes | session u32 | length u32 | crc u32 | payload
//
// (big endian; crc is CRC-32C of the first 16 header bytes and the payload;
// payload at most MaxLinkPayload bytes). Types: HELLO (host starts a
// session), WELCOME (agent accepts it), DATA. A reader skips anything that
// is not a valid frame (resyncing on the magic) and every frame of another
// session. HELLO and WELCOME are preceded by LinkFlushSize zero bytes, so
// that a frame cut short by a lost connection is completed with garbage
// (and dropped on its CRC) instead of swallowing the handshake. The host
// repeats HELLO until WELCOME comes: data sent before the guest opens its
// port is dropped by the guest kernel.
//
// On the guest, a HELLO for a new session ends the current one (its ttrpc
// connection closes and its calls are cancelled) and starts a new one.
// Unix sockets and vsock do not need this: they use plain ttrpc.
const (
	MaxLinkPayload = 8 << 10
	linkHeaderSize = 20
	LinkFlushSize  = linkHeaderSize + MaxLinkPayload

	frameHello   = 1
	frameWelcome = 2
	frameData    = 3
)

var (
	linkMagic = [4]byte{'M', 'V', 'Z', 'L'}
	crcTable  = crc32.MakeTable(crc32.Castagnoli)
	zeros     = make([]byte, LinkFlushSize)
)

type frame struct {
	typ     byte
	session uint32
	payload []byte // valid until the next call to next
}

// appendFrame appends one frame to b.
func appendFrame(b []byte, typ byte, session uint32, payload []byte) []byte {
	var h [linkHeaderSize]byte
	copy(h[:4], linkMagic[:])
	h[4] = typ
	binary.BigEndian.PutUint32(h[8:], session)
	binary.BigEndian.PutUint32(h[12:], uint32(len(payload)))
	crc := crc32.Update(0, crcTable, h[:16])
	crc = crc32.Update(crc, crcTable, payload)
	binary.BigEndian.PutUint32(h[16:], crc)
	b = append(b, h[:]...)
	return append(b, payload...)
}

// appendData appends p as DATA frames.
func appendData(b []byte, session uint32, p []byte) []byte {
	for len(p) > 0 {
		n := min(len(p), MaxLinkPayload)
		b = appendFrame(b, frameData, session, p[:n])
		p = p[n:]
	}
	return b
}

// handshake is a flush followed by a HELLO or WELCOME frame.
func handshake(typ byte, session uint32) []byte {
	b := make([]byte, 0, LinkFlushSize+linkHeaderSize)
	b = append(b, zeros...)
	return appendFrame(b, typ, session, nil)
}

// frameReader finds valid frames in a byte stream.
type frameReader struct {
	r   io.Reader
	buf []byte
	off int // start of unparsed data in buf
}

func newFrameReader(r io.Reader) *frameReader {
	return &frameReader{r: r, buf: make([]byte, 0, 4*LinkFlushSize)}
}

// reset drops buffered bytes.
func (fr *frameReader) reset() {
	fr.buf = fr.buf[:0]
	fr.off = 0
}

// fill reads until at least n unparsed bytes are buffered.
func (fr *frameReader) fill(n int) error {
	for len(fr.buf)-fr.off < n {
		if fr.off == len(fr.buf) {
			fr.buf, fr.off = fr.buf[:0], 0
		}
		if cap(fr.buf)-fr.off < n || len(fr.buf) == cap(fr.buf) {
			m := copy(fr.buf[:cap(fr.buf)], fr.buf[fr.off:])
			fr.buf, fr.off = fr.buf[:m], 0
			if cap(fr.buf) < n || m == cap(fr.buf) {
				nb := make([]byte, m, max(2*cap(fr.buf), n))
				copy(nb, fr.buf)
				fr.buf = nb
			}
		}
		k, err := fr.r.Read(fr.buf[len(fr.buf):cap(fr.buf)])
		fr.buf = fr.buf[:len(fr.buf)+k]
		if err != nil && k == 0 {
			return err
		}
	}
	return nil
}

// next returns the next valid frame.
func (fr *frameReader) next() (frame, error) {
	for {
		if err := fr.fill(len(linkMagic)); err != nil {
			return frame{}, err
		}
		i := bytes.Index(fr.buf[fr.off:], linkMagic[:])
		if i < 0 {
			// Keep a possible magic prefix at the end.
			fr.off = len(fr.buf) - (len(linkMagic) - 1)
			continue
		}
		fr.off += i
		if err := fr.fill(linkHeaderSize); err != nil {
			return frame{}, err
		}
		h := fr.buf[fr.off : fr.off+linkHeaderSize]
		typ := h[4]
		n := binary.BigEndian.Uint32(h[12:])
		if typ < frameHello || typ > frameData || h[5] != 0 || h[6] != 0 || h[7] != 0 || n > MaxLinkPayload {
			fr.off++
			continue
		}
		if err := fr.fill(linkHeaderSize + int(n)); err != nil {
			return frame{}, err
		}
		h = fr.buf[fr.off : fr.off+linkHeaderSize]
		payload := fr.buf[fr.off+linkHeaderSize : fr.off+linkHeaderSize+int(n)]
		crc := crc32.Update(0, crcTable, h[:16])
		crc = crc32.Update(crc, crcTable, payload)
		if crc != binary.BigEndian.Uint32(h[16:]) {
			fr.off++
			continue
		}
		fr.off += linkHeaderSize + int(n)
		return frame{typ: typ, session: binary.BigEndian.Uint32(h[8:]), payload: payload}, nil
	}
}

// linkAddr is the address of a link connection.
type linkAddr string

func (a linkAddr) Network() string { return "macvz-link" }
func (a linkAddr) String() string  { return string(a) }

// ---- host side ----

// LinkClient starts a new session on c, the host end of the agent's
// virtio-serial port, and returns a connection that carries ttrpc in that
// session (wrap it with ttrpc.NewClient). It repeats its HELLO every
// `retry` until the agent answers or ctx ends; leftovers of earlier
// connections are skipped. Closing the returned connection closes c.
func LinkClient(ctx context.Context, c net.Conn, retry time.Duration) (net.Conn, error) {
	if retry <= 0 {
		retry = 50 * time.Millisecond
	}
	var sb [4]byte
	var session uint32
	for session == 0 {
		if _, err := rand.Read(sb[:]); err != nil {
			return nil, err
		}
		session = binary.BigEndian.Uint32(sb[:])
	}
	hello := handshake(frameHello, session)
	fr := newFrameReader(c)

	welcome := make(chan error, 1)
	go func() {
		// The bytes come from the guest: a panic ends this connection
		// attempt, not the shim.
		welcome <- guard.Do(nil, "agent link handshake", func() error {
			for {
				f, err := fr.next()
				if err != nil {
					return err
				}
				if f.typ == frameWelcome && f.session == session {
					return nil
				}
			}
		})
	}()
	t := time.NewTicker(retry)
	defer t.Stop()
	for {
		// A HELLO the guest has not read yet is not sent again: QEMU
		// takes nothing from the socket until the guest opens its port,
		// so during a boot the repeats would pile up (28 of 8 KiB each
		// in a 4 s boot under TCG) and the guest's only vCPU would read
		// them all and answer each, on the way to its first call.
		if queued, ok := unsentBytes(c); !ok || queued == 0 {
			if _, err := c.Write(hello); err != nil {
				return nil, fmt.Errorf("agent link: sending hello: %w", err)
			}
		}
		select {
		case err := <-welcome:
			if err != nil {
				return nil, fmt.Errorf("agent link: waiting for the agent: %w", err)
			}
			return &hostLink{c: c, fr: fr, session: session}, nil
		case <-t.C:
		case <-ctx.Done():
			// Unblock the reader; c is unusable now.
			c.SetReadDeadline(time.Now())
			<-welcome
			return nil, fmt.Errorf("agent link: no answer from the agent: %w", ctx.Err())
		}
	}
}

type hostLink struct {
	c       net.Conn
	fr      *frameReader
	session uint32
	rmu     sync.Mutex
	pending []byte
	wmu     sync.Mutex
	wbuf    []byte
}

func (h *hostLink) Read(p []byte) (n int, err error) {
	// ttrpc's receiver goroutine calls this with bytes from the guest: a
	// panic becomes an error that closes this connection only.
	defer guard.Recover(nil, "agent link connection", &err)
	h.rmu.Lock()
	defer h.rmu.Unlock()
	for len(h.pending) == 0 {
		f, err := h.fr.next()
		if err != nil {
			return 0, err
		}
		if f.typ == frameData && f.session == h.session {
			h.pending = f.payload
		}
	}
	n = copy(p, h.pending)
	h.pending = h.pending[n:]
	return n, nil
}

func (h *hostLink) Write(p []byte) (int, error) {
	h.wmu.Lock()
	defer h.wmu.Unlock()
	h.wbuf = appendData(h.wbuf[:0], h.session, p)
	if _, err := h.c.Write(h.wbuf); err != nil {
		return 0, err
	}
	return len(p), nil
}

func (h *hostLink) Close() error                       { return h.c.Close() }
func (h *hostLink) LocalAddr() net.Addr                { return h.c.LocalAddr() }
func (h *hostLink) RemoteAddr() net.Addr               { return h.c.RemoteAddr() }
func (h *hostLink) SetDeadline(t time.Time) error      { return h.c.SetDeadline(t) }
func (h *hostLink) SetReadDeadline(t time.Time) error  { return h.c.SetReadDeadline(t) }
func (h *hostLink) SetWriteDeadline(t time.Time) error { return h.c.SetWriteDeadline(t) }

// ---- guest side ----

// LinkListener serves link sessions on a port: Accept returns a connection
// for each session a host starts, after the previous one ended. Open
// opens the port; the listener reopens it (every Retry) when it fails.
// A read that returns EOF (no host connected) ends the current session and
// is retried every Retry.
type LinkListener struct {
	open  func() (io.ReadWriteCloser, error)
	retry time.Duration
	name  string

	sessions chan *guestLink
	done     chan struct{}
	once     sync.Once

	wmu  sync.Mutex // serializes whole writes to port
	port io.ReadWriteCloser
	pmu  sync.Mutex // guards port
	cur  *guestLink // current session, reader goroutine only
}

// NewLinkListener starts serving sessions on the port that open opens.
// name is the listener's address in logs.
func NewLinkListener(name string, open func() (io.ReadWriteCloser, error), retry time.Duration) *LinkListener {
	if retry <= 0 {
		retry = 20 * time.Millisecond
	}
	l := &LinkListener{
		open:     open,
		retry:    retry,
		name:     name,
		sessions: make(chan *guestLink),
		done:     make(chan struct{}),
	}
	go l.run()
	return l
}

func (l *LinkListener) sleep() bool {
	t := time.NewTimer(l.retry)
	defer t.Stop()
	select {
	case <-l.done:
		return false
	case <-t.C:
		return true
	}
}

func (l *LinkListener) run() {
	defer l.endSession()
	for {
		port, err := l.open()
		if err != nil {
			if !l.sleep() {
				return
			}
			continue
		}
		l.pmu.Lock()
		l.port = port
		l.pmu.Unlock()
		select {
		case <-l.done:
			port.Close()
			return
		default:
		}
		err = l.serve(port)
		l.endSession()
		l.pmu.Lock()
		l.port = nil
		l.pmu.Unlock()
		port.Close()
		select {
		case <-l.done:
			return
		default:
		}
		_ = err
		if !l.sleep() {
			return
		}
	}
}

// serve reads frames from port until it fails with anything but EOF.
func (l *LinkListener) serve(port io.ReadWriteCloser) error {
	fr := newFrameReader(port)
	for {
		f, err := fr.next()
		if errors.Is(err, io.EOF) {
			// No host: end the session, keep the port, poll.
			l.endSession()
			fr.reset()
			if !l.sleep() {
				return nil
			}
			continue
		}
		if err != nil {
			return err
		}
		switch f.typ {
		case frameHello:
			if l.cur != nil && l.cur.session == f.session && !l.cur.isClosed() {
				// A repeated HELLO: the WELCOME may have been lost.
				go l.write(handshake(frameWelcome, f.session))
				continue
			}
			l.endSession()
			s := &guestLink{l: l, session: f.session, in: make(chan []byte, 64), closed: make(chan struct{})}
			l.cur = s
			select {
			case l.sessions <- s:
			case <-l.done:
				return nil
			}
		case frameData:
			if l.cur == nil || l.cur.session != f.session {
				continue
			}
			p := append([]byte(nil), f.payload...)
			select {
			case l.cur.in <- p:
			case <-l.cur.closed:
			case <-l.done:
				return nil
			}
		}
	}
}

func (l *LinkListener) endSession() {
	if l.cur != nil {
		l.cur.Close()
		l.cur = nil
	}
}

// write writes b to the port as one unit.
func (l *LinkListener) write(b []byte) error {
	l.wmu.Lock()
	defer l.wmu.Unlock()
	l.pmu.Lock()
	port := l.port
	l.pmu.Unlock()
	if port == nil {
		return net.ErrClosed
	}
	_, err := port.Write(b)
	return err
}

// Accept returns the next session, once it has been welcomed.
func (l *LinkListener) Accept() (net.Conn, error) {
	select {
	case s := <-l.sessions:
		if err := l.write(handshake(frameWelcome, s.session)); err != nil {
			s.Close()
		}
		return s, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

// Close stops the listener and closes the port.
func (l *LinkListener) Close() error {
	l.once.Do(func() {
		close(l.done)
		l.pmu.Lock()
		if l.port != nil {
			l.port.Close()
		}
		l.pmu.Unlock()
	})
	return nil
}

func (l *LinkListener) Addr() net.Addr { return linkAddr(l.name) }

// guestLink is one session on the guest side.
type guestLink struct {
	l       *LinkListener
	session uint32
	in      chan []byte
	closed  chan struct{}
	once    sync.Once
	rmu     sync.Mutex
	pending []byte
	wbuf    []byte // guarded by l.wmu
}

func (g *guestLink) isClosed() bool {
	select {
	case <-g.closed:
		return true
	default:
		return false
	}
}

func (g *guestLink) Read(p []byte) (int, error) {
	g.rmu.Lock()
	defer g.rmu.Unlock()
	for len(g.pending) == 0 {
		select {
		case b := <-g.in:
			g.pending = b
		case <-g.closed:
			return 0, io.EOF
		}
	}
	n := copy(p, g.pending)
	g.pending = g.pending[n:]
	return n, nil
}

func (g *guestLink) Write(p []byte) (int, error) {
	if g.isClosed() {
		return 0, net.ErrClosed
	}
	g.l.wmu.Lock()
	defer g.l.wmu.Unlock()
	g.l.pmu.Lock()
	port := g.l.port
	g.l.pmu.Unlock()
	if port == nil {
		return 0, net.ErrClosed
	}
	g.wbuf = appendData(g.wbuf[:0], g.session, p)
	if _, err := port.Write(g.wbuf); err != nil {
		return 0, err
	}
	return len(p), nil
}

func (g *guestLink) Close() error {
	g.once.Do(func() { close(g.closed) })
	return nil
}

func (g *guestLink) LocalAddr() net.Addr              { return g.l.Addr() }
func (g *guestLink) RemoteAddr() net.Addr             { return linkAddr(fmt.Sprintf("session-%08x", g.session)) }
func (g *guestLink) SetDeadline(time.Time) error      { return os.ErrNoDeadline }
func (g *guestLink) SetReadDeadline(time.Time) error  { return os.ErrNoDeadline }
func (g *guestLink) SetWriteDeadline(time.Time) error { return os.ErrNoDeadline }

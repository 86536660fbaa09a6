package agent

import (
	"context"
	"io"
	"sync"

	"google.golang.org/grpc/codes"

	api "github.com/macvz/macvz/runtime/agentapi"
)

const (
	defaultOutputBuffer = 4 << 20
	maxChunk            = 32 << 10
	defaultWindow       = 1 << 20
	// maxInFlightChunks keeps a stream below ttrpc's 64 queued messages.
	maxInFlightChunks = 32
)

// outBuf keeps a process's output from the moment it starts until a reader
// acknowledges it. When limit bytes are kept the pump stops reading, so the
// process blocks in write (back-pressure, nothing is dropped).
type outBuf struct {
	mu      sync.Mutex
	changed chan struct{} // closed and replaced on every change
	data    []byte        // output from offset base on
	base    uint64
	limit   int
	eof     bool
	gen     uint64 // current reader; a new reader replaces the old one
	discard bool   // nobody will read: drop output, never block
}

func newOutBuf(limit int) *outBuf {
	if limit <= 0 {
		limit = defaultOutputBuffer
	}
	return &outBuf{changed: make(chan struct{}), limit: limit}
}

// closedOutBuf is a stream that has ended before it began (stderr on a tty).
func closedOutBuf() *outBuf {
	b := newOutBuf(1)
	b.eof = true
	return b
}

func (b *outBuf) notifyLocked() {
	close(b.changed)
	b.changed = make(chan struct{})
}

// pump copies r into b until r fails, then marks the end and closes r.
func (b *outBuf) pump(r io.ReadCloser) {
	defer r.Close()
	buf := make([]byte, maxChunk)
	for {
		// Wait for room.
		b.mu.Lock()
		for len(b.data) >= b.limit {
			ch := b.changed
			b.mu.Unlock()
			<-ch
			b.mu.Lock()
		}
		room := min(b.limit-len(b.data), len(buf))
		b.mu.Unlock()

		n, err := r.Read(buf[:room])
		b.mu.Lock()
		if n > 0 && !b.discard {
			b.data = append(b.data, buf[:n]...)
			b.notifyLocked()
		}
		if err != nil {
			b.eof = true
			b.notifyLocked()
			b.mu.Unlock()
			return
		}
		b.mu.Unlock()
	}
}

// drop ends the current reader and discards all output from now on.
func (b *outBuf) drop() {
	b.mu.Lock()
	b.gen++
	b.discard = true
	b.data = nil
	b.notifyLocked()
	b.mu.Unlock()
}

// ackFirst frees everything before off for a reader that attaches with
// an offset it already has.
func (b *outBuf) ackFirst(off uint64) {
	b.mu.Lock()
	end := b.base + uint64(len(b.data))
	gen := b.gen
	b.mu.Unlock()
	b.ack(gen, off, end)
}

// finish marks the end of a stream that was never pumped.
func (b *outBuf) finish() {
	b.mu.Lock()
	b.eof = true
	b.notifyLocked()
	b.mu.Unlock()
}

// ack frees everything before off (bounded by what the reader was sent).
func (b *outBuf) ack(gen, off, sent uint64) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if gen != b.gen {
		return
	}
	off = min(off, sent)
	if off <= b.base {
		return
	}
	n := off - b.base
	b.data = b.data[n:]
	if len(b.data) == 0 {
		b.data = nil // let the backing array go
	}
	b.base = off
	b.notifyLocked()
}

// attach makes a new reader current and returns its generation.
func (b *outBuf) attach() uint64 {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.gen++
	b.notifyLocked()
	return b.gen
}

var errReplaced = errf(codes.Aborted, "another reader took over this output stream")

// serve sends the output to a ReadOutput stream; see OutputRequest.
func (b *outBuf) serve(ctx context.Context, stream api.Agent_ReadOutputServer, window uint64) error {
	if window == 0 || window > defaultWindow {
		window = defaultWindow
	}
	gen := b.attach()
	// The receiver: acks until the client closes its side.
	detached := make(chan struct{})
	var (
		mu       sync.Mutex
		sent     uint64 // guarded by mu
		inflight []uint64
	)
	b.mu.Lock()
	sent = b.base
	b.mu.Unlock()
	go func() {
		defer close(detached)
		for {
			m, err := stream.Recv()
			if err != nil {
				return
			}
			mu.Lock()
			s := sent
			for len(inflight) > 0 && inflight[0] <= m.Ack {
				inflight = inflight[1:]
			}
			mu.Unlock()
			b.ack(gen, m.Ack, s)
		}
	}()

	for {
		b.mu.Lock()
		if b.gen != gen {
			b.mu.Unlock()
			return errReplaced
		}
		mu.Lock()
		next := sent
		nInflight := len(inflight)
		mu.Unlock()
		end := b.base + uint64(len(b.data))
		if next < b.base {
			next = b.base
		}
		if b.eof && next >= end {
			b.mu.Unlock()
			return nil
		}
		if next < end && next-b.base < window && nInflight < maxInFlightChunks {
			n := min(end-next, window-(next-b.base), maxChunk)
			chunk := &api.OutputChunk{Offset: next, Data: append([]byte(nil), b.data[next-b.base:next-b.base+n]...)}
			b.mu.Unlock()
			mu.Lock()
			sent = next + n
			inflight = append(inflight, sent)
			mu.Unlock()
			if err := stream.Send(chunk); err != nil {
				return err
			}
			continue
		}
		ch := b.changed
		b.mu.Unlock()
		select {
		case <-ch:
		case <-detached:
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

package shim

import (
	"context"
	"errors"
	"io"
	"sync"
	"time"

	"github.com/containerd/ttrpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/macvz/macvz/internal/guard"
	"github.com/macvz/macvz/runtime/agentapi"
)

// maxTeeQueue bounds the output queued for one attached reader of a
// logged output; a reader that falls further behind is cut off (the log
// and the process never wait for readers).
var maxTeeQueue = 4 << 20

// maxTeeInflight is the most chunks sent to a reader and not yet
// acknowledged (ttrpc buffers 64 messages per stream; the agent keeps 32).
const maxTeeInflight = 32

// outputCopier copies one output of a watched process from the agent into
// its log, and to readers attached through the shim (ReadOutput of a
// logged output is served here: the agent gives each output to one reader
// only, and that one is the log).
type outputCopier struct {
	w     *watched
	stdio agentapi.Stdio
	lw    *lineWriter

	mu     sync.Mutex
	offset uint64 // offset of the next byte of the stream
	eof    bool
	subs   map[*teeReader]struct{}
}

func newOutputCopier(w *watched, stdio agentapi.Stdio, lw *lineWriter) *outputCopier {
	return &outputCopier{w: w, stdio: stdio, lw: lw, subs: map[*teeReader]struct{}{}}
}

// run copies until the output ends (the agent's EOF, the process is gone,
// the VM stopped) or ctx ends.
func (o *outputCopier) run(ctx context.Context) {
	defer o.finish()
	defer o.lw.Close()
	backoff := 50 * time.Millisecond
	buf := make([]byte, 32<<10)
	for ctx.Err() == nil {
		s, err := o.w.t.agent.get(ctx)
		if err != nil {
			if o.w.t.agent.vmStopped() {
				return
			}
			if !sleepCtx(ctx, backoff, o.w.t.agent.waitChange()) {
				return
			}
			backoff = min(2*backoff, time.Second)
			continue
		}
		o.mu.Lock()
		from := o.offset
		o.mu.Unlock()
		r, err := agentapi.OpenOutput(ctx, s.api, o.w.key.id(), o.stdio, from)
		if err == nil {
			err = o.copy(r, buf)
			r.Close()
			if err == nil {
				return // EOF: all of it is in the log
			}
		}
		switch {
		case ctx.Err() != nil:
			return
		case status.Code(err) == codes.NotFound:
			o.w.log.Debug("output gone", "stdio", o.stdio, "err", err)
			return
		case errors.Is(err, ttrpc.ErrClosed) || s.isClosed():
			// The connection dropped: reconnect and resume where we were
			// (the agent keeps what was not acknowledged).
		default:
			o.w.log.Warn("reading output", "stdio", o.stdio, "err", err)
		}
		if o.w.t.agent.vmStopped() {
			return
		}
		if !sleepCtx(ctx, backoff, o.w.t.agent.waitChange()) {
			return
		}
		backoff = min(2*backoff, time.Second)
	}
}

// copy reads r into the log and the readers until EOF (nil) or an error.
func (o *outputCopier) copy(r *agentapi.OutputReader, buf []byte) error {
	for {
		n, err := r.Read(buf)
		if n > 0 {
			o.lw.Write(buf[:n])
			o.publish(r.Offset()-uint64(n), buf[:n])
		}
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
	}
}

func (o *outputCopier) publish(off uint64, p []byte) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.offset = off + uint64(len(p))
	for t := range o.subs {
		if !t.push(off, p) {
			delete(o.subs, t)
		}
	}
}

func (o *outputCopier) finish() {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.eof = true
	for t := range o.subs {
		t.end()
		delete(o.subs, t)
	}
}

// teeReader is a reader attached to a logged output through the shim.
type teeReader struct {
	mu      sync.Mutex
	chunks  []*agentapi.OutputChunk
	queued  int
	eof     bool
	err     error
	notify  chan struct{}
	attach  uint64 // offset when it attached
	acked   uint64
	detach  bool
	sent    []uint64 // end offsets of chunks sent and not acknowledged
	sentEnd uint64
}

func (t *teeReader) wake() {
	select {
	case t.notify <- struct{}{}:
	default:
	}
}

// push queues a copy of p; false when the reader is too far behind (it
// gets an error and is dropped).
func (t *teeReader) push(off uint64, p []byte) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.queued+len(p) > maxTeeQueue {
		t.err = status.Errorf(codes.ResourceExhausted, "output reader fell more than %d bytes behind; detached", maxTeeQueue)
		t.wake()
		return false
	}
	t.chunks = append(t.chunks, &agentapi.OutputChunk{Offset: off, Data: append([]byte(nil), p...)})
	t.queued += len(p)
	t.wake()
	return true
}

func (t *teeReader) end() {
	t.mu.Lock()
	t.eof = true
	t.mu.Unlock()
	t.wake()
}

// serve streams the output to one reader, from now on, honouring its
// window: the ReadOutput contract of the agent, but starting at the
// current offset (earlier output is in the log).
func (o *outputCopier) serve(ctx context.Context, ss agentapi.Agent_ReadOutputServer, first *agentapi.OutputRequest) error {
	window := uint64(first.Window)
	if window == 0 || window > agentapi.DefaultWindow {
		window = agentapi.DefaultWindow
	}
	t := &teeReader{notify: make(chan struct{}, 1)}
	o.mu.Lock()
	if o.eof {
		o.mu.Unlock()
		return nil
	}
	t.attach, t.acked, t.sentEnd = o.offset, o.offset, o.offset
	o.subs[t] = struct{}{}
	o.mu.Unlock()
	defer func() {
		o.mu.Lock()
		delete(o.subs, t)
		o.mu.Unlock()
	}()

	// Acknowledgements (and the detach) from the reader. However it
	// ends (a panic included), the reader is detached.
	go func() {
		defer func() {
			t.mu.Lock()
			t.detach = true
			t.mu.Unlock()
			t.wake()
		}()
		guard.Do(o.w.log, "output reader acknowledgements", func() error {
			for {
				m, err := ss.Recv()
				if err != nil {
					return err
				}
				t.mu.Lock()
				if m.Ack > t.acked {
					t.acked = m.Ack
					for len(t.sent) > 0 && t.sent[0] <= t.acked {
						t.sent = t.sent[1:]
					}
				}
				t.mu.Unlock()
				t.wake()
			}
		})
	}()

	for {
		t.mu.Lock()
		for !t.detach && t.err == nil && len(t.chunks) > 0 &&
			t.sentEnd-t.acked < window && len(t.sent) < maxTeeInflight {
			c := t.chunks[0]
			t.chunks = t.chunks[1:]
			t.queued -= len(c.Data)
			end := c.Offset + uint64(len(c.Data))
			t.sent = append(t.sent, end)
			t.sentEnd = end
			t.mu.Unlock()
			if err := ss.Send(c); err != nil {
				return err
			}
			t.mu.Lock()
		}
		switch {
		case t.detach:
			t.mu.Unlock()
			return nil
		case t.err != nil:
			err := t.err
			t.mu.Unlock()
			return err
		case t.eof && len(t.chunks) == 0:
			t.mu.Unlock()
			return nil
		}
		t.mu.Unlock()
		select {
		case <-t.notify:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

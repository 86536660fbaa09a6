package agentapi

import (
	"context"
	"io"
	"math"
	"testing"

	"github.com/containerd/errdefs"
	"github.com/containerd/ttrpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// chunkAgent answers ReadOutput with the chunks a guest chose.
type chunkAgent struct {
	AgentClient
	chunks []*OutputChunk
}

func (a *chunkAgent) ReadOutput(context.Context) (Agent_ReadOutputClient, error) {
	return &chunkStream{chunks: a.chunks}, nil
}

type chunkStream struct {
	ttrpc.ClientStream
	chunks []*OutputChunk
}

func (s *chunkStream) Send(*OutputRequest) error { return nil }
func (s *chunkStream) CloseSend() error          { return nil }
func (s *chunkStream) Recv() (*OutputChunk, error) {
	if len(s.chunks) == 0 {
		return nil, io.EOF
	}
	c := s.chunks[0]
	s.chunks = s.chunks[1:]
	return c, nil
}

func TestOutputReaderGuestOffsets(t *testing.T) {
	for _, tc := range []struct {
		name   string
		chunks []*OutputChunk
		want   string
		bad    bool
	}{
		{"in order", []*OutputChunk{{Offset: 0, Data: []byte("ab")}, {Offset: 2, Data: []byte("cd")}}, "abcd", false},
		{"repeated", []*OutputChunk{{Offset: 0, Data: []byte("ab")}, {Offset: 0, Data: []byte("abc")}}, "abc", false},
		{"gap", []*OutputChunk{{Offset: 5, Data: []byte("xy")}}, "xy", false},
		{"past the end", []*OutputChunk{{Offset: 0, Data: []byte("a")}, {Offset: math.MaxUint64 - 1, Data: []byte("xyz")}}, "a", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r, err := OpenOutput(context.Background(), &chunkAgent{chunks: tc.chunks}, &ProcessID{ContainerId: "c"}, Stdio_STDOUT, 0)
			if err != nil {
				t.Fatal(err)
			}
			b, err := io.ReadAll(r)
			if string(b) != tc.want {
				t.Errorf("read %q, want %q", b, tc.want)
			}
			if tc.bad != errdefs.IsOutOfRange(err) {
				t.Errorf("err = %v", err)
			}
		})
	}
}

// floodAgent answers PortForward's first frame, then sends data without
// end whatever the host acknowledges: a hostile guest.
type floodAgent struct {
	AgentClient
	chunk int
	sent  *int
}

func (a *floodAgent) PortForward(ctx context.Context) (Agent_PortForwardClient, error) {
	return &floodStream{ctx: ctx, a: a}, nil
}

type floodStream struct {
	ttrpc.ClientStream
	ctx     context.Context
	a       *floodAgent
	started bool
}

func (s *floodStream) Send(*PortForwardFrame) error { return nil }
func (s *floodStream) CloseSend() error             { return nil }
func (s *floodStream) Recv() (*PortForwardFrame, error) {
	if err := s.ctx.Err(); err != nil {
		return nil, err
	}
	if !s.started {
		s.started = true
		return &PortForwardFrame{}, nil
	}
	*s.a.sent += s.a.chunk
	return &PortForwardFrame{Data: make([]byte, s.a.chunk)}, nil
}

// TestForwardConnBoundsAGuestFlood: a guest that sends past the window,
// in big chunks or many small ones, ends the tunnel with InvalidArgument
// instead of growing the host's queue while nobody reads.
func TestForwardConnBoundsAGuestFlood(t *testing.T) {
	for _, chunk := range []int{32 << 10, 1} {
		sent := 0
		c, err := DialPort(context.Background(), &floodAgent{chunk: chunk, sent: &sent}, 80)
		if err != nil {
			t.Fatal(err)
		}
		<-c.recvDone // the receiver gave up on its own
		c.mu.Lock()
		failed, queued := c.failed, 0
		for _, q := range c.queue {
			queued += len(q)
		}
		c.mu.Unlock()
		if status.Code(failed) != codes.InvalidArgument || uint64(queued) > c.window {
			t.Errorf("chunk %d: after %d bytes sent, failed %v with %d bytes queued; want InvalidArgument and at most the window", chunk, sent, failed, queued)
		}
		// What was queued is still read, then the failure.
		var total int
		for {
			n, err := c.Read(make([]byte, 64<<10))
			total += n
			if err != nil {
				if total != queued {
					t.Errorf("chunk %d: read %d bytes, %d were queued", chunk, total, queued)
				}
				break
			}
		}
		c.Close()
	}
}

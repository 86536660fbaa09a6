package agentapi

import (
	"context"
	"io"
	"math"
	"testing"

	"github.com/containerd/errdefs"
	"github.com/containerd/ttrpc"
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

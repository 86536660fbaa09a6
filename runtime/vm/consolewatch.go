package vm

import (
	"bytes"
	"sync/atomic"
	"time"
)

// ConsoleWatch is a writer beside a guest console's copy into its log
// that notes when AgentConsoleMark first went through it (the mark may be
// split between writes); after that it only counts bytes. A backend that
// copies the console through one implements ConsoleMarker with it.
type ConsoleWatch struct {
	tail []byte // the last len(AgentConsoleMark)-1 bytes, until seen
	at   atomic.Pointer[time.Time]
}

var agentMark = []byte(AgentConsoleMark)

func (w *ConsoleWatch) Write(p []byte) (int, error) {
	if w.at.Load() != nil {
		return len(p), nil
	}
	k := len(agentMark) - 1
	// A mark split between writes: the last write's end and this one's
	// start.
	edge := append(w.tail, p[:min(len(p), k)]...)
	if bytes.Contains(edge, agentMark) || bytes.Contains(p, agentMark) {
		now := time.Now()
		w.at.Store(&now)
		w.tail = nil
		return len(p), nil
	}
	if len(p) >= k {
		edge = p
	}
	w.tail = append(w.tail[:0:0], edge[len(edge)-min(len(edge), k):]...)
	return len(p), nil
}

// AgentLineAt is when the mark was first written; zero until then.
func (w *ConsoleWatch) AgentLineAt() time.Time {
	if t := w.at.Load(); t != nil {
		return *t
	}
	return time.Time{}
}

package vm

import (
	"strings"
	"testing"
)

// TestConsoleWatch: the agent's first console line is noticed wherever
// the console's reads split it, once, and not when it never comes.
func TestConsoleWatch(t *testing.T) {
	console := "\x1b[0mearly output\r\nlevel=INFO msg=serving " + AgentConsoleMark + " listen=serial:agent\r\nlevel=INFO msg=later " + AgentConsoleMark + "\r\n"
	first := strings.Index(console, AgentConsoleMark) + len(AgentConsoleMark)
	for _, size := range []int{1, 2, 3, 5, 7, 13, len(AgentConsoleMark), 64, len(console)} {
		w := &ConsoleWatch{}
		for off := 0; off < len(console); off += size {
			end := min(off+size, len(console))
			before := w.AgentLineAt()
			if n, err := w.Write([]byte(console[off:end])); n != end-off || err != nil {
				t.Fatalf("Write = %d, %v", n, err)
			}
			if seen := !w.AgentLineAt().IsZero(); seen != (end >= first) {
				t.Fatalf("reads of %d bytes: after %d bytes seen=%v, the mark ends at %d", size, end, seen, first)
			}
			if !before.IsZero() && !w.AgentLineAt().Equal(before) {
				t.Fatalf("reads of %d bytes: the time moved on a later mark", size)
			}
		}
	}
	w := &ConsoleWatch{}
	for range 100 {
		w.Write([]byte("c=macvz-agen"))
		w.Write([]byte("X c=macvz"))
	}
	if !w.AgentLineAt().IsZero() || len(w.tail) >= len(AgentConsoleMark) {
		t.Errorf("no mark: at %v, %d bytes kept", w.AgentLineAt(), len(w.tail))
	}
}

package qemu

import (
	"strings"
	"testing"

	"github.com/macvz/macvz/runtime/vm"
)

// TestMarkWatch: the agent's first console line is noticed wherever the
// console's reads split it, once, and not when it never comes.
func TestMarkWatch(t *testing.T) {
	console := "\x1b[0mearly output\r\nlevel=INFO msg=serving " + vm.AgentConsoleMark + " listen=serial:agent\r\nlevel=INFO msg=later " + vm.AgentConsoleMark + "\r\n"
	first := strings.Index(console, vm.AgentConsoleMark) + len(vm.AgentConsoleMark)
	for _, size := range []int{1, 2, 3, 5, 7, 13, len(vm.AgentConsoleMark), 64, len(console)} {
		w := &markWatch{mark: vm.AgentConsoleMark}
		for off := 0; off < len(console); off += size {
			end := min(off+size, len(console))
			w.Write([]byte(console[off:end]))
			if seen := !w.At().IsZero(); seen != (end >= first) {
				t.Fatalf("reads of %d bytes: after %d bytes seen=%v, the mark ends at %d", size, end, seen, first)
			}
			if end >= first && off < first {
				at := w.At()
				defer func() {
					if !w.At().Equal(at) {
						t.Errorf("reads of %d bytes: the time moved on a later mark", size)
					}
				}()
			}
		}
	}
	w := &markWatch{mark: vm.AgentConsoleMark}
	for range 100 {
		w.Write([]byte("c=macvz-agen"))
		w.Write([]byte("X c=macvz"))
	}
	if !w.At().IsZero() || len(w.tail) >= len(vm.AgentConsoleMark) {
		t.Errorf("no mark: at %v, %d bytes kept", w.At(), len(w.tail))
	}
	none := &markWatch{}
	none.Write([]byte(console))
	if !none.At().IsZero() {
		t.Error("a watch with no mark saw one")
	}
}

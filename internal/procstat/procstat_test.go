package procstat

import "testing"

func TestCPUTicks(t *testing.T) {
	// A command with a space and a parenthesis of its own.
	line := []byte("87 (sl) eep) R 1 87 87 0 -1 4194560 299 0 0 0 13 7 0 0 20 0 1 0 340 3354624 81\n")
	u, s, err := CPUTicks(line)
	if err != nil || u != 13 || s != 7 {
		t.Errorf("CPUTicks = %d, %d, %v; want 13, 7", u, s, err)
	}
	for _, bad := range []string{"", "87 sleep R 1", "87 (sleep) R 1 87 87", "87 (sleep) R 1 87 87 0 -1 4194560 299 0 0 0 x 7"} {
		if _, _, err := CPUTicks([]byte(bad)); err == nil {
			t.Errorf("CPUTicks(%q): no error", bad)
		}
	}
}

package shim

import (
	"bytes"
	"fmt"
	"strings"
	"testing"
	"time"
)

func TestLineLimiter(t *testing.T) {
	var b bytes.Buffer
	now := time.Unix(1000, 0)
	l := newLineLimiter(&b, 3, time.Minute)
	l.now = func() time.Time { return now }
	for i := range 1000 {
		if n, err := fmt.Fprintf(l, "line %d\n", i); err != nil || n == 0 {
			t.Fatal(n, err)
		}
	}
	if got := strings.Count(b.String(), "\n"); got != 3 {
		t.Fatalf("%d lines passed in one window, want 3:\n%s", got, b.String())
	}
	now = now.Add(time.Minute)
	fmt.Fprintf(l, "next\n")
	if !strings.Contains(b.String(), "997 log lines of the agent connection dropped") || !strings.HasSuffix(b.String(), "next\n") {
		t.Fatalf("after the window:\n%s", b.String())
	}
}

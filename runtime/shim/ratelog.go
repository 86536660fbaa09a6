package shim

import (
	"fmt"
	"io"
	"sync"
	"time"
)

// lineLimiter passes at most burst writes (log lines) per window to w
// and drops the rest, saying how many it dropped once the next window
// starts. The shim's logrus logger (the ttrpc library's messages) writes
// through one: ttrpc logs a line for every message on a stream it does
// not know, and those messages come from the guest, which could
// otherwise turn a few bytes of its own into far more of the host's log.
type lineLimiter struct {
	mu      sync.Mutex
	w       io.Writer
	burst   int
	window  time.Duration
	now     func() time.Time
	start   time.Time
	n       int
	dropped int
}

func newLineLimiter(w io.Writer, burst int, window time.Duration) *lineLimiter {
	return &lineLimiter{w: w, burst: burst, window: window, now: time.Now}
}

func (l *lineLimiter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if now := l.now(); now.Sub(l.start) >= l.window {
		if l.dropped > 0 {
			fmt.Fprintf(l.w, "time=%q level=warning msg=\"%d log lines of the agent connection dropped (more than %d in %v)\"\n",
				now.UTC().Format(time.RFC3339Nano), l.dropped, l.burst, l.window)
		}
		l.start, l.n, l.dropped = now, 0, 0
	}
	if l.n >= l.burst {
		l.dropped++
		return len(p), nil
	}
	l.n++
	return l.w.Write(p)
}

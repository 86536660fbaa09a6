package shim

import (
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"syscall"
	"time"
)

// The CRI container log format, as the kubelet reads it
// (k8s.io/kubernetes pkg/kubelet/kuberuntime/logs, parseCRILog) and as
// containerd writes it:
//
//	<timestamp RFC3339Nano> <stdout|stderr> <F|P> <content>\n
//
// F ends a line, P is a part of a line that continues in the next entry of
// the same stream (the kubelet joins P parts without a newline and ends the
// line at the F). What containerd's writer does, and so this one:
//   - a line is written once its newline arrives, without the newline and
//     without a '\r' before it (CRLF ends a line like LF);
//   - a line longer than MaxLogLine bytes is cut into P entries of
//     MaxLogLine bytes, its last part an F (a part is cut only when more
//     bytes of the line follow, so a line of exactly MaxLogLine bytes is
//     one F);
//   - output that ends without a newline (the process exited mid-line) is
//     written as a P entry;
//   - the timestamp is the time the entry is written.
const (
	// MaxLogLine is containerd's default max_container_log_line_size.
	MaxLogLine = 16 << 10

	logTagFull    = "F"
	logTagPartial = "P"
)

// criLog is one container log file shared by its stdout and stderr
// writers. Entries are whole writes on an O_APPEND file.
type criLog struct {
	log  *slog.Logger
	path string

	mu      sync.Mutex
	f       *os.File
	failing bool // a write failed; logged once until the next success
	buf     []byte
	now     func() time.Time
}

func openCRILog(path string, log *slog.Logger) (*criLog, error) {
	f, err := openLogFile(path)
	if err != nil {
		return nil, err
	}
	return &criLog{log: log, path: path, f: f, now: time.Now}, nil
}

// errLogNotRegular: the log path is a symbolic link or not a regular file.
var errLogNotRegular = errors.New("not a regular file")

// openLogFile opens (or creates) a container log for appending. The shim
// runs as root and the path comes from the pod's configuration, so it
// never follows a symbolic link in the last component (O_NOFOLLOW) and
// refuses anything but a regular file: a FIFO or device planted there is
// opened without blocking (O_NONBLOCK) and refused.
func openLogFile(path string) (*os.File, error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_APPEND|syscall.O_NOFOLLOW|syscall.O_NONBLOCK|syscall.O_CLOEXEC, 0o640)
	if err != nil {
		if errors.Is(err, syscall.ELOOP) {
			return nil, fmt.Errorf("container log %s is a symbolic link; refusing to write through it: %w", path, errLogNotRegular)
		}
		if errors.Is(err, syscall.ENXIO) { // a FIFO without a reader
			return nil, fmt.Errorf("container log %s is not a regular file: %w", path, errLogNotRegular)
		}
		return nil, err
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, err
	}
	if !fi.Mode().IsRegular() {
		f.Close()
		return nil, fmt.Errorf("container log %s is a %s: %w", path, fi.Mode().Type(), errLogNotRegular)
	}
	return f, nil
}

// entry writes one log entry.
func (l *criLog) entry(stream, tag string, content []byte) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.f == nil {
		return
	}
	b := l.buf[:0]
	b = l.now().AppendFormat(b, time.RFC3339Nano)
	b = append(b, ' ')
	b = append(b, stream...)
	b = append(b, ' ')
	b = append(b, tag...)
	b = append(b, ' ')
	b = append(b, content...)
	b = append(b, '\n')
	l.buf = b
	if _, err := l.f.Write(b); err != nil {
		if !l.failing {
			l.log.Warn("writing the container log failed; dropping output until it works again", "path", l.path, "err", err)
			l.failing = true
		}
	} else {
		l.failing = false
	}
}

// reopen closes the file and opens path again (after a rotation).
func (l *criLog) reopen() error {
	f, err := openLogFile(l.path)
	if err != nil {
		return err
	}
	l.mu.Lock()
	old := l.f
	l.f = f
	l.failing = false
	l.mu.Unlock()
	if old != nil {
		old.Close()
	}
	return nil
}

func (l *criLog) close() {
	l.mu.Lock()
	f := l.f
	l.f = nil
	l.mu.Unlock()
	if f != nil {
		f.Close()
	}
}

// lineWriter cuts one stream's output into CRI log entries.
type lineWriter struct {
	log    *criLog
	stream string // "stdout" or "stderr"
	max    int
	line   []byte // the current line's bytes not yet written
}

func newLineWriter(l *criLog, stream string) *lineWriter {
	return &lineWriter{log: l, stream: stream, max: MaxLogLine}
}

// Write takes output; it never fails (a broken log file drops output
// rather than blocking the process).
func (w *lineWriter) Write(p []byte) (int, error) {
	n := len(p)
	for len(p) > 0 {
		i := bytes.IndexByte(p, '\n')
		if i < 0 {
			w.line = append(w.line, p...)
			p = nil
			// A '\r' at the end may be half of a CRLF: keep it.
			keep := 0
			if w.line[len(w.line)-1] == '\r' {
				keep = 1
			}
			w.cutParts(keep)
			break
		}
		w.line = append(w.line, p[:i]...)
		p = p[i+1:]
		if len(w.line) > 0 && w.line[len(w.line)-1] == '\r' {
			w.line = w.line[:len(w.line)-1]
		}
		w.cutParts(0)
		w.log.entry(w.stream, logTagFull, w.line)
		w.line = w.line[:0]
	}
	return n, nil
}

// cutParts writes P entries while more than max bytes of the line are
// pending, not counting the last keep bytes.
func (w *lineWriter) cutParts(keep int) {
	off := 0
	for len(w.line)-keep-off > w.max {
		w.log.entry(w.stream, logTagPartial, w.line[off:off+w.max])
		off += w.max
	}
	if off > 0 {
		w.line = append(w.line[:0], w.line[off:]...)
	}
}

// Close writes a pending partial line as a P entry (the stream ended
// without a newline).
func (w *lineWriter) Close() error {
	w.cutParts(0)
	if len(w.line) > 0 {
		w.log.entry(w.stream, logTagPartial, w.line)
		w.line = w.line[:0]
	}
	return nil
}

// Package boundedlog writes a log that a guest fills (a VM's serial
// console, QEMU's own messages about it) without letting it fill the
// host: when the file reaches its limit it becomes <path>.1, replacing
// the previous one, and a new file starts. At most about twice the
// limit is ever on disk, and the newest output is always kept.
package boundedlog

import (
	"fmt"
	"os"
	"sync"
	"syscall"
)

// DefaultLimit is the size at which a log is rotated.
const DefaultLimit = 8 << 20

// Writer appends to a bounded log. It is safe for concurrent use.
type Writer struct {
	mu    sync.Mutex
	path  string
	limit int64
	f     *os.File
	size  int64
}

// Open opens path for appending (creating it 0600; a symlink there is
// refused) with the given limit (DefaultLimit when <= 0).
func Open(path string, limit int64) (*Writer, error) {
	if limit <= 0 {
		limit = DefaultLimit
	}
	w := &Writer{path: path, limit: limit}
	if err := w.open(); err != nil {
		return nil, err
	}
	return w, nil
}

func (w *Writer) open() error {
	f, err := os.OpenFile(w.path, os.O_CREATE|os.O_WRONLY|os.O_APPEND|syscall.O_NOFOLLOW, 0o600)
	if err != nil {
		return err
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return err
	}
	if !fi.Mode().IsRegular() {
		f.Close()
		return fmt.Errorf("%s is not a regular file", w.path)
	}
	w.f, w.size = f, fi.Size()
	return nil
}

// Write appends p, rotating first when the file would pass its limit.
// It never fails because of the limit: the output goes to the new file.
func (w *Writer) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.f == nil {
		return 0, os.ErrClosed
	}
	written := 0
	for len(p) > 0 {
		if w.size >= w.limit {
			if err := w.rotate(); err != nil {
				return written, err
			}
		}
		chunk := p
		if room := w.limit - w.size; int64(len(chunk)) > room {
			chunk = chunk[:room]
		}
		n, err := w.f.Write(chunk)
		written += n
		w.size += int64(n)
		p = p[n:]
		if err != nil {
			return written, err
		}
	}
	return written, nil
}

func (w *Writer) rotate() error {
	w.f.Close()
	w.f = nil
	if err := os.Rename(w.path, w.path+".1"); err != nil && !os.IsNotExist(err) {
		return err
	}
	return w.open()
}

// Close closes the file.
func (w *Writer) Close() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.f == nil {
		return nil
	}
	err := w.f.Close()
	w.f = nil
	return err
}

package guard

import (
	"bytes"
	"errors"
	"log/slog"
	"strings"
	"sync"
	"testing"

	"github.com/containerd/errdefs"
)

func TestDoRecovers(t *testing.T) {
	var buf bytes.Buffer
	log := slog.New(slog.NewTextHandler(&buf, nil)).With("sandbox", "sb1")
	err := Do(log, "test stream", func() error {
		var s []byte
		_ = s[3] // index out of range
		return nil
	})
	if !errdefs.IsInternal(err) || !strings.Contains(err.Error(), "test stream") {
		t.Fatalf("err = %v, want an ErrInternal naming the stream", err)
	}
	if out := buf.String(); !strings.Contains(out, "sandbox=sb1") || !strings.Contains(out, "panic recovered") {
		t.Fatalf("log = %q, want the panic with the sandbox id", out)
	}
}

func TestDoPassesErrors(t *testing.T) {
	want := errors.New("plain")
	if err := Do(nil, "x", func() error { return want }); err != want {
		t.Fatalf("err = %v, want %v", err, want)
	}
	if err := Do(nil, "x", func() error { return nil }); err != nil {
		t.Fatalf("err = %v", err)
	}
}

func TestGoRecovers(t *testing.T) {
	var buf bytes.Buffer
	var mu sync.Mutex
	log := slog.New(slog.NewTextHandler(lockedWriter{&buf, &mu}, nil))
	done := make(chan struct{})
	Go(log, "goroutine", func() {
		defer close(done)
		panic("boom")
	})
	<-done
	// The process is alive: this test still runs.
}

type lockedWriter struct {
	b  *bytes.Buffer
	mu *sync.Mutex
}

func (w lockedWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.b.Write(p)
}

func TestRecoverNilErrp(t *testing.T) {
	func() {
		defer Recover(nil, "x", nil)
		panic("boom")
	}()
}

package qemu

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// fakeQMP serves the QMP protocol on a unix socket with scripted replies.
type fakeQMP struct {
	t    *testing.T
	path string
	ln   *net.UnixListener

	mu   sync.Mutex
	cmds []string
	fds  int
}

func newFakeQMP(t *testing.T, handle func(w *json.Encoder, cmd string, id json.RawMessage) bool) *fakeQMP {
	t.Helper()
	f := &fakeQMP{t: t, path: filepath.Join(t.TempDir(), "qmp.sock")}
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: f.path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	f.ln = ln
	t.Cleanup(func() { ln.Close() })
	go func() {
		c, err := ln.AcceptUnix()
		if err != nil {
			return
		}
		defer c.Close()
		w := json.NewEncoder(c)
		w.Encode(map[string]any{"QMP": map[string]any{"version": map[string]any{}, "capabilities": []string{"oob"}}})
		for {
			buf := make([]byte, 4096)
			oob := make([]byte, 128)
			n, oobn, _, _, err := c.ReadMsgUnix(buf, oob)
			if err != nil {
				return
			}
			if oobn > 0 {
				msgs, _ := syscall.ParseSocketControlMessage(oob[:oobn])
				for _, m := range msgs {
					fds, _ := syscall.ParseUnixRights(&m)
					for _, fd := range fds {
						syscall.Close(fd)
						f.mu.Lock()
						f.fds++
						f.mu.Unlock()
					}
				}
			}
			for _, line := range strings.Split(strings.TrimSpace(string(buf[:n])), "\n") {
				var msg struct {
					Execute string          `json:"execute"`
					ID      json.RawMessage `json:"id"`
				}
				if json.Unmarshal([]byte(line), &msg) != nil {
					continue
				}
				f.mu.Lock()
				f.cmds = append(f.cmds, msg.Execute)
				f.mu.Unlock()
				if msg.Execute == "qmp_capabilities" {
					w.Encode(map[string]any{"return": map[string]any{}, "id": msg.ID})
					continue
				}
				if !handle(w, msg.Execute, msg.ID) {
					return
				}
			}
		}
	}()
	return f
}

func TestQMP(t *testing.T) {
	f := newFakeQMP(t, func(w *json.Encoder, cmd string, id json.RawMessage) bool {
		switch cmd {
		case "query-status":
			w.Encode(map[string]any{"event": "STOP", "data": map[string]any{}})
			w.Encode(map[string]any{"return": map[string]any{"status": "running"}, "id": id})
		case "bad":
			w.Encode(map[string]any{"error": map[string]any{"class": "CommandNotFound", "desc": "The command bad has not been found"}, "id": id})
		case "slow":
			// never answers
		case "getfd":
			w.Encode(map[string]any{"return": map[string]any{}, "id": id})
		case "quit":
			return false
		}
		return true
	})
	var events []string
	var emu sync.Mutex
	ctx := context.Background()
	q, err := dialQMP(ctx, f.path, func(e qmpEvent) {
		emu.Lock()
		events = append(events, e.Event)
		emu.Unlock()
	})
	if err != nil {
		t.Fatal(err)
	}
	ret, err := q.execute(ctx, "query-status", nil)
	if err != nil || !strings.Contains(string(ret), "running") {
		t.Fatalf("query-status: %s %v", ret, err)
	}
	emu.Lock()
	if len(events) != 1 || events[0] != "STOP" {
		t.Errorf("events %v", events)
	}
	emu.Unlock()
	_, err = q.execute(ctx, "bad", nil)
	var qe *qmpError
	if !errors.As(err, &qe) || qe.Class != "CommandNotFound" {
		t.Errorf("bad: %v", err)
	}
	cctx, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	_, err = q.execute(cctx, "slow", nil)
	cancel()
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("slow: %v", err)
	}
	r, w, _ := os.Pipe()
	defer r.Close()
	if _, err := q.executeFD(ctx, "getfd", map[string]any{"fdname": "x"}, w); err != nil {
		t.Errorf("getfd: %v", err)
	}
	w.Close()
	f.mu.Lock()
	if f.fds != 1 {
		t.Errorf("server received %d fds", f.fds)
	}
	f.mu.Unlock()
	// The server hangs up on quit: the command fails as closed, and so do
	// later ones.
	if _, err := q.execute(ctx, "quit", nil); !errors.Is(err, errQMPClosed) {
		t.Errorf("quit: %v", err)
	}
	<-q.Done()
	if _, err := q.execute(ctx, "query-status", nil); !errors.Is(err, errQMPClosed) {
		t.Errorf("after close: %v", err)
	}
	q.Close()
}

func TestQMPBadGreeting(t *testing.T) {
	path := filepath.Join(t.TempDir(), "s")
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err == nil {
			c.Write([]byte("{\"hello\": 1}\n"))
			time.Sleep(time.Second)
			c.Close()
		}
	}()
	if _, err := dialQMP(context.Background(), path, nil); err == nil || !strings.Contains(err.Error(), "greeting") {
		t.Errorf("dialQMP: %v", err)
	}
	// A server that never greets: the context bounds the wait.
	path2 := filepath.Join(t.TempDir(), "s2")
	ln2, err := net.Listen("unix", path2)
	if err != nil {
		t.Fatal(err)
	}
	defer ln2.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if _, err := dialQMP(ctx, path2, nil); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("silent server: %v", err)
	}
}

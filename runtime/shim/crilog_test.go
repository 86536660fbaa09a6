package shim

import (
	"errors"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

func testLog(t *testing.T) (*criLog, string) {
	path := filepath.Join(t.TempDir(), "c.log")
	l, err := openCRILog(path, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	at := time.Date(2026, 1, 2, 3, 4, 5, 6789, time.UTC)
	l.now = func() time.Time { return at }
	t.Cleanup(l.close)
	return l, path
}

const ts = "2026-01-02T03:04:05.000006789Z"

func TestCRILogLines(t *testing.T) {
	long := strings.Repeat("x", MaxLogLine)
	for _, tc := range []struct {
		name   string
		writes []string
		want   []string // entries after the timestamp and stream
	}{
		{"lines", []string{"a\nb\n"}, []string{"F a", "F b"}},
		{"split writes", []string{"he", "llo\nwor", "ld\n"}, []string{"F hello", "F world"}},
		{"empty line", []string{"\n\n"}, []string{"F ", "F "}},
		{"crlf", []string{"dos\r\n"}, []string{"F dos"}},
		{"crlf across writes", []string{"dos\r", "\n"}, []string{"F dos"}},
		{"lone cr", []string{"a\rb\n"}, []string{"F a\rb"}},
		{"partial at end", []string{"a\nno newline"}, []string{"F a", "P no newline"}},
		{"exactly max", []string{long + "\n"}, []string{"F " + long}},
		{"exactly max with crlf", []string{long + "\r\n"}, []string{"F " + long}},
		{"max plus one", []string{long + "y\n"}, []string{"P " + long, "F y"}},
		{"twice max", []string{long + long + "\n"}, []string{"P " + long, "F " + long}},
		{"long in pieces", []string{long[:100], long[100:] + "zz", "z\n"}, []string{"P " + long, "F zzz"}},
		{"long unterminated", []string{long + "tail"}, []string{"P " + long, "P tail"}},
		{"max unterminated", []string{long}, []string{"P " + long}},
		{"max then cr pending", []string{long + "\r"}, []string{"P " + long, "P \r"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l, path := testLog(t)
			w := newLineWriter(l, "stdout")
			for _, s := range tc.writes {
				if n, err := w.Write([]byte(s)); n != len(s) || err != nil {
					t.Fatalf("Write: %d %v", n, err)
				}
			}
			w.Close()
			b, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, line := range strings.SplitAfter(string(b), "\n") {
				if line == "" {
					continue
				}
				rest, ok := strings.CutPrefix(line, ts+" stdout ")
				if !ok || !strings.HasSuffix(rest, "\n") {
					t.Fatalf("bad entry %q", line)
				}
				got = append(got, strings.TrimSuffix(rest, "\n"))
			}
			if strings.Join(got, "|") != strings.Join(tc.want, "|") {
				t.Errorf("entries:\n got %q\nwant %q", short(got), short(tc.want))
			}
		})
	}
}

func short(ss []string) []string {
	out := make([]string, len(ss))
	for i, s := range ss {
		if len(s) > 40 {
			s = s[:20] + "..." + s[len(s)-10:] + " (" + string(rune('0'+len(s)/MaxLogLine)) + "×max)"
		}
		out[i] = s
	}
	return out
}

func TestCRILogStreamsAndReopen(t *testing.T) {
	l, path := testLog(t)
	out, errw := newLineWriter(l, "stdout"), newLineWriter(l, "stderr")
	out.Write([]byte("o1\n"))
	errw.Write([]byte("e1\n"))
	if err := os.Rename(path, path+".1"); err != nil {
		t.Fatal(err)
	}
	out.Write([]byte("o2\n")) // still the old file until reopened
	if err := l.reopen(); err != nil {
		t.Fatal(err)
	}
	errw.Write([]byte("e2\n"))
	old, _ := os.ReadFile(path + ".1")
	cur, _ := os.ReadFile(path)
	wantOld := ts + " stdout F o1\n" + ts + " stderr F e1\n" + ts + " stdout F o2\n"
	if string(old) != wantOld {
		t.Errorf("rotated file:\n%s", old)
	}
	if string(cur) != ts+" stderr F e2\n" {
		t.Errorf("new file:\n%s", cur)
	}
	if st, _ := os.Stat(path); st.Mode().Perm() != 0o640 {
		t.Errorf("mode %v", st.Mode().Perm())
	}
	// Writes after close are dropped, not errors.
	l.close()
	if n, err := out.Write([]byte("late\n")); n != 5 || err != nil {
		t.Errorf("Write after close: %d %v", n, err)
	}
}

func TestValidID(t *testing.T) {
	for _, id := range []string{"abc", "0123456789abcdef", "ctr_1-a"} {
		if _, err := keyOf(id, id); err != nil {
			t.Errorf("%q: %v", id, err)
		}
	}
	for _, id := range []string{"", "a/b", "..", "a.b", " a", strings.Repeat("a", 129)} {
		if _, err := keyOf(id, ""); err == nil {
			t.Errorf("container %q accepted", id)
		}
	}
	if _, err := keyOf("c", "e.x"); err == nil {
		t.Error("exec id with a dot accepted")
	}
	if k, _ := keyOf("c", "e"); k.fileName() != "c.e.json" {
		t.Errorf("file name %q", k.fileName())
	}
}

// TestOpenLogFileRefusesNonRegular: a symlink or a FIFO at the log path is
// refused (without blocking on the FIFO); a regular file is appended to.
func TestOpenLogFileRefusesNonRegular(t *testing.T) {
	dir := t.TempDir()
	target := filepath.Join(dir, "target")
	if err := os.WriteFile(target, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(dir, "link.log")
	if err := os.Symlink(target, link); err != nil {
		t.Fatal(err)
	}
	if f, err := openLogFile(link); !errors.Is(err, errLogNotRegular) {
		if f != nil {
			f.Close()
		}
		t.Errorf("symlink: %v, want errLogNotRegular", err)
	}
	fifo := filepath.Join(dir, "fifo.log")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	if f, err := openLogFile(fifo); !errors.Is(err, errLogNotRegular) {
		if f != nil {
			f.Close()
		}
		t.Errorf("fifo: %v, want errLogNotRegular", err)
	}
	if b, _ := os.ReadFile(target); string(b) != "x" {
		t.Errorf("target changed: %q", b)
	}
	f, err := openLogFile(target)
	if err != nil {
		t.Fatalf("regular file: %v", err)
	}
	f.Close()
}

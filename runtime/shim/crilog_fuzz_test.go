package shim

import (
	"bytes"
	"os"
	"strings"
	"testing"
	"time"
)

// FuzzCRILog writes arbitrary output (what a guest process prints), cut
// into arbitrary chunks and spread over stdout and stderr, through the
// CRI log writer: every entry must be one well-formed line, no content
// longer than the line limit, and the kubelet's reading of the entries
// (P parts joined, F ends a line) must give back each stream's output
// with CRLF as LF.
func FuzzCRILog(f *testing.F) {
	f.Add([]byte("hello\nworld\n"), []byte{}, uint8(0))
	f.Add([]byte("dos\r\nline\r"), []byte{3, 0}, uint8(2))
	f.Add([]byte("\n\n\r\r\n\x00\xff"), []byte{1}, uint8(1))
	f.Add(bytes.Repeat([]byte("x"), 300), []byte{7, 130}, uint8(16))
	f.Add([]byte("a\rb\nno newline"), []byte{2, 129}, uint8(3))
	f.Add([]byte(" stdout F fake entry\n2026-01-01T00:00:00Z stderr P x"), []byte{5}, uint8(0))

	f.Fuzz(func(t *testing.T, data, cuts []byte, max uint8) {
		l, path := testLog(t)
		ws := [2]*lineWriter{newLineWriter(l, "stdout"), newLineWriter(l, "stderr")}
		if max > 0 {
			ws[0].max, ws[1].max = int(max), int(max)
		}
		var sent [2][]byte
		rest := data
		for i := 0; len(rest) > 0; i++ {
			n := len(rest)
			which := 0
			if len(cuts) > 0 {
				c := cuts[i%len(cuts)]
				n = min(n, int(c&0x7f)+1)
				which = int(c >> 7)
			}
			if k, err := ws[which].Write(rest[:n]); k != n || err != nil {
				t.Fatalf("Write: %d, %v", k, err)
			}
			sent[which] = append(sent[which], rest[:n]...)
			rest = rest[n:]
		}
		ws[0].Close()
		ws[1].Close()

		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		if len(b) > 0 && b[len(b)-1] != '\n' {
			t.Fatalf("log does not end with a newline: %q", b)
		}
		var got [2][]byte
		limit := ws[0].max
		for _, line := range bytes.SplitAfter(b, []byte("\n")) {
			if len(line) == 0 {
				continue
			}
			line = line[:len(line)-1]
			stamp, after, ok := bytes.Cut(line, []byte(" "))
			if !ok {
				t.Fatalf("entry %q: no timestamp", line)
			}
			if _, err := time.Parse(time.RFC3339Nano, string(stamp)); err != nil {
				t.Fatalf("entry %q: timestamp: %v", line, err)
			}
			stream, after, _ := bytes.Cut(after, []byte(" "))
			tag, content, ok := bytes.Cut(after, []byte(" "))
			if !ok {
				t.Fatalf("entry %q: no tag", line)
			}
			which := map[string]int{"stdout": 0, "stderr": 1}
			i, ok := which[string(stream)]
			if !ok {
				t.Fatalf("entry %q: stream %q", line, stream)
			}
			if len(content) > limit {
				t.Fatalf("entry %q: %d bytes of content, over %d", line, len(content), limit)
			}
			switch string(tag) {
			case "F":
				got[i] = append(append(got[i], content...), '\n')
			case "P":
				got[i] = append(got[i], content...)
			default:
				t.Fatalf("entry %q: tag %q", line, tag)
			}
		}
		for i := range 2 {
			want := strings.ReplaceAll(string(sent[i]), "\r\n", "\n")
			if string(got[i]) != want {
				t.Fatalf("stream %d reads back as %q, want %q", i, got[i], want)
			}
		}
	})
}

package main

import (
	"bytes"
	"strings"
	"testing"
	"time"
)

func testView(elapsed time.Duration, done1, done2 int64) pullView {
	return pullView{Ref: "reg/vm:1", Elapsed: elapsed, Blobs: []blobView{
		{Digest: "sha256:aaaaaaaaaaaaaaaa", MediaType: "application/vnd.cirruslabs.tart.config.v1", Size: 100, Done: 100, Complete: true},
		{Digest: "sha256:bbbbbbbbbbbbbbbb", MediaType: "application/vnd.cirruslabs.tart.disk.v2", Size: 100 << 20, Done: done1, Fetched: done1, Complete: done1 == 100<<20},
		{Digest: "sha256:cccccccccccccccc", MediaType: "application/vnd.cirruslabs.tart.disk.v2", Size: 100 << 20, Done: done2, Fetched: done2, Complete: done2 == 100<<20},
	}}
}

// TestProgressPlain: without a terminal, one line per period with the
// bytes, the share, the blobs done, the rate and the ETA.
func TestProgressPlain(t *testing.T) {
	var out bytes.Buffer
	p := newProgressPrinter(&out, false)
	p.update(testView(0, 0, 0))
	p.update(testView(time.Second, 10<<20, 0))
	p.update(testView(5*time.Second, 50<<20, 0))
	p.update(testView(6*time.Second, 60<<20, 10<<20))
	p.done(testView(9*time.Second, 100<<20, 100<<20), "sha256:0123456789abcdef", nil)
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	if len(lines) != 3 {
		t.Fatalf("lines:\n%s", out.String())
	}
	if !strings.HasPrefix(lines[0], "reg/vm:1: 100B of 200MiB (0%), 1 of 3 blobs") {
		t.Errorf("first line %q", lines[0])
	}
	if l := lines[1]; !strings.Contains(l, "50MiB of 200MiB (25%)") || !strings.Contains(l, "/s, ETA ") {
		t.Errorf("second line %q", l)
	}
	if lines[2] != "pulled reg/vm:1 (0123456789abc) in 9s: 200MiB, 200MiB downloaded" {
		t.Errorf("last line %q", lines[2])
	}
}

// TestProgressTerminal: on a terminal the block is redrawn in place:
// the cursor goes back up over the last block, each line is cleared,
// only blobs downloading now are listed.
func TestProgressTerminal(t *testing.T) {
	var out bytes.Buffer
	p := newProgressPrinter(&out, true)
	p.update(testView(time.Second, 10<<20, 5<<20))
	first := out.String()
	if strings.Contains(first, "\x1b[2A") || strings.Count(first, "\x1b[2K") != 3 || !strings.Contains(first, "bbbbbbbbbbbb disk") || strings.Contains(first, "aaaaaaaaaaaa") {
		t.Errorf("first block %q", first)
	}
	out.Reset()
	p.update(testView(2*time.Second, 100<<20, 20<<20))
	second := out.String()
	// Back over the 3 lines drawn; 2 now (one blob left downloading),
	// the third cleared.
	if !strings.HasPrefix(second, "\x1b[3A") || strings.Contains(second, "bbbbbbbbbbbb") || !strings.Contains(second, "cccccccccccc disk") {
		t.Errorf("second block %q", second)
	}
	if p.drawn != 2 {
		t.Errorf("drawn %d lines", p.drawn)
	}
}

func TestProgressHelpers(t *testing.T) {
	if b := bar(50, 100, 10); b != "[=====     ]" {
		t.Errorf("bar %q", b)
	}
	if b := bar(5, 0, 4); b != "[====]" {
		t.Errorf("bar of an empty blob %q", b)
	}
	if e, ok := etaOf(100<<20, 10<<20); !ok || e != "10s" {
		t.Errorf("eta %q %v", e, ok)
	}
	if _, ok := etaOf(1, 0); ok {
		t.Error("an ETA at no rate")
	}
	if k := blobKind("application/vnd.macvz.vm.initrd.v1"); k != "initrd" {
		t.Errorf("kind %q", k)
	}
}

package main

import (
	"bytes"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/macvz/macvz/runtime/adminapi"
)

func TestHumanSize(t *testing.T) {
	for b, want := range map[int64]string{0: "0B", 512: "512B", 1024: "1KiB", 1536: "1.5KiB", 320 << 20: "320MiB", 50 << 30: "50GiB", 3<<40 + 1<<39: "3.5TiB"} {
		if got := humanSize(b); got != want {
			t.Errorf("humanSize(%d) = %q, want %q", b, got, want)
		}
	}
}

func TestHumanDuration(t *testing.T) {
	for d, want := range map[time.Duration]string{-time.Second: "0s", 45 * time.Second: "45s", 12*time.Minute + 3*time.Second: "12m", 3*time.Hour + 4*time.Minute: "3h4m", 53 * time.Hour: "2d5h"} {
		if got := humanDuration(d); got != want {
			t.Errorf("humanDuration(%v) = %q, want %q", d, got, want)
		}
	}
}

// TestSafeTerminal: what a guest writes reaches a terminal without its
// control characters (escape sequences), even split across writes;
// text, newlines and UTF-8 pass.
func TestSafeTerminal(t *testing.T) {
	var out bytes.Buffer
	w := &safeTerminal{w: &out}
	for _, p := range []string{"login: \x1b]0;pwned\x07ok\r\n", "caf\xc3", "\xa9 \x9b\x00\xff\n"} {
		if n, err := w.Write([]byte(p)); err != nil || n != len(p) {
			t.Fatalf("Write(%q) = %d, %v", p, n, err)
		}
	}
	want := `login: \x1b]0;pwned\x07ok` + "\r\n" + "café " + `\x9b\x00\xff` + "\n"
	if got := out.String(); got != want {
		t.Errorf("safe output %q, want %q", got, want)
	}
}

// TestProbeAdmin: a daemon that is not running is said so, with the
// socket's path.
func TestProbeAdmin(t *testing.T) {
	dir, err := os.MkdirTemp("", "mvzadm")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	path := filepath.Join(dir, "admin.sock")
	if err := probeAdmin(path); err == nil || !strings.Contains(err.Error(), "not running") || !strings.Contains(err.Error(), path) {
		t.Errorf("no socket: %v", err)
	}
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	if err := probeAdmin(path); err != nil {
		t.Errorf("a listening socket: %v", err)
	}
	ln.(*net.UnixListener).SetUnlinkOnClose(false)
	ln.Close()
	if err := probeAdmin(path); err == nil || !strings.Contains(err.Error(), "not running") || !strings.Contains(err.Error(), path) {
		t.Errorf("a stale socket: %v", err)
	}
}

// TestPrintVMs: one line per VM, every cell filled (a script can split
// on blanks), the balloon's target after the booted size.
func TestPrintVMs(t *testing.T) {
	now := time.Date(2026, 12, 5, 12, 0, 0, 0, time.UTC)
	vms := []*adminapi.VM{
		{SandboxId: "0123456789abcdef0123", PodName: "web", PodNamespace: "default", Backend: "qemu", Image: "example.com/guest:1", State: "running",
			Ips: []string{"10.88.0.5"}, Cpus: 2, MemoryBytes: 1 << 30, MemoryTargetBytes: 512 << 20, BootedUnixNano: now.Add(-90 * time.Second).UnixNano(),
			Boot: "warm", Slot: 1, Os: "linux"},
		{SandboxId: "fedcba9876543210", PodName: "idle", PodNamespace: "default", Backend: "qemu", State: "created"},
	}
	var out bytes.Buffer
	printVMs(&out, vms, now, false)
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	want := [][]string{
		{"SANDBOX", "ID", "POD", "BACKEND", "IMAGE", "STATE", "IP", "CPUS", "MEMORY", "UPTIME", "BOOT", "SLOT"},
		{"0123456789abc", "default/web", "qemu", "example.com/guest:1", "running", "10.88.0.5", "2", "1GiB>512MiB", "1m", "warm", "linux/1"},
		{"fedcba9876543", "default/idle", "qemu", "-", "created", "-", "-", "-", "-", "-", "-"},
	}
	if len(lines) != len(want) {
		t.Fatalf("table:\n%s", out.String())
	}
	for i, l := range lines {
		if got := strings.Fields(l); strings.Join(got, " ") != strings.Join(want[i], " ") {
			t.Errorf("line %d: %q, want %q", i, got, want[i])
		}
	}
}

func TestPrintImages(t *testing.T) {
	now := time.Date(2026, 12, 5, 12, 0, 0, 0, time.UTC)
	imgs := []*adminapi.Image{{Id: "sha256:abcdef0123456789", Names: []string{"example.com/guest:1", "example.com/guest@sha256:11"}, Kind: "linux",
		SizeBytes: 8 << 30, DiskBytes: 300 << 20, CreatedUnixNano: now.Add(-2 * time.Hour).UnixNano(), UsedBy: []string{"0123456789abcdef"}}}
	var out bytes.Buffer
	printImages(&out, imgs, now, false)
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	want := []string{
		"IMAGE IMAGE ID KIND SIZE ON DISK CREATED USED BY",
		"example.com/guest:1 abcdef0123456 linux 8GiB 300MiB 2h0m ago 0123456789abc",
		"example.com/guest@sha256:11 abcdef0123456 linux 8GiB 300MiB 2h0m ago 0123456789abc",
	}
	if len(lines) != len(want) {
		t.Fatalf("table:\n%s", out.String())
	}
	for i, l := range lines {
		if got := strings.Join(strings.Fields(l), " "); got != want[i] {
			t.Errorf("line %d: %q, want %q", i, got, want[i])
		}
	}
}

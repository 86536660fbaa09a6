package integration

import (
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestDaemonSocket checks the CRI socket's life: mode 0660, a second
// daemon refused while the first serves, a clean exit on SIGTERM that
// removes the socket, and a stale socket from a crash replaced.
func TestDaemonSocket(t *testing.T) {
	d := startDaemon(t, "")
	fi, err := os.Stat(d.socket)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode()&os.ModeSocket == 0 || fi.Mode().Perm() != 0o660 {
		t.Errorf("socket mode %v, want a socket with 0660", fi.Mode())
	}

	// A second daemon on the same socket must not steal it.
	out, err := exec.Command(macvzBin, "serve", "--config", filepath.Join(d.dir, "config.toml")).CombinedOutput()
	if err == nil || !strings.Contains(string(out), "served by a running process") {
		t.Errorf("second daemon: %v\n%s", err, out)
	}
	d.mustCrictl("version") // the first one still answers

	// SIGTERM: exit 0, socket gone.
	d.cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan error, 1)
	go func() { done <- d.cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("macvz exited with %v after SIGTERM\n%s", err, d.log)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("macvz did not exit within 20s of SIGTERM")
	}
	if _, err := os.Stat(d.socket); !os.IsNotExist(err) {
		t.Errorf("socket left after SIGTERM: %v", err)
	}

	// A stale socket (bound, nobody listening) is replaced.
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: d.socket, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	ln.SetUnlinkOnClose(false)
	ln.Close()
	cmd := exec.Command(macvzBin, "serve", "--config", filepath.Join(d.dir, "config.toml"))
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { cmd.Process.Signal(syscall.SIGTERM); cmd.Wait() }()
	deadline := time.Now().Add(20 * time.Second)
	for {
		if out, err := d.crictl("version"); err == nil && strings.Contains(out, "macvz") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("daemon did not take over the stale socket")
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// TestConfigDefault checks `macvz config default` prints a config that
// `macvz serve` accepts as-is, and that a bad config is refused by key.
func TestConfigDefault(t *testing.T) {
	out, err := exec.Command(macvzBin, "config", "default").Output()
	if err != nil {
		t.Fatal(err)
	}
	for _, w := range []string{`socket = "/var/run/macvz/macvz.sock"`, "max_concurrent_downloads = 4", "[registry.hosts", "insecure"} {
		if !strings.Contains(string(out), w) {
			t.Errorf("default config lacks %q", w)
		}
	}
	p := filepath.Join(t.TempDir(), "bad.toml")
	os.WriteFile(p, []byte("backend = \"hyperv\"\n"), 0o600)
	msg, err := exec.Command(macvzBin, "serve", "--config", p).CombinedOutput()
	if err == nil || !strings.Contains(string(msg), "backend") {
		t.Errorf("bad backend accepted or not named: %v\n%s", err, msg)
	}
}

package netplugin

import (
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containernetworking/cni/pkg/types"
)

func TestDefaultMacNetwork(t *testing.T) {
	paths := []string{"/var/run/socket_vmnet", "/opt/homebrew/var/run/socket_vmnet"}
	for _, c := range []struct {
		sockets    []string
		mode, sock string
	}{
		{nil, ModeVmnetNAT, ""},
		{[]string{"/opt/homebrew/var/run/socket_vmnet"}, ModeSocket, "/opt/homebrew/var/run/socket_vmnet"},
		{[]string{"/opt/homebrew/var/run/socket_vmnet", "/var/run/socket_vmnet"}, ModeSocket, "/var/run/socket_vmnet"}, // the root-only directory first
		{[]string{"/var/run/socket_vmnet.bridged.en0"}, ModeVmnetNAT, ""},                                              // a bridged socket is never a default
	} {
		got := DefaultMacNetwork(paths, func(p string) bool {
			for _, s := range c.sockets {
				if s == p {
					return true
				}
			}
			return false
		})
		if got.Mode != c.mode || got.Socket != c.sock || got.Why == "" {
			t.Errorf("sockets %v: %+v; want %s %q", c.sockets, got, c.mode, c.sock)
		}
		if got.Mode == ModeVmnetNAT && !strings.Contains(got.Why, "isolates") {
			t.Errorf("NAT without saying it isolates pods: %q", got.Why)
		}
	}
	// The real paths are socket_vmnet's documented ones.
	if len(SocketVmnetPaths) != 2 || SocketVmnetPaths[0] != "/var/run/socket_vmnet" || SocketVmnetPaths[1] != "/opt/homebrew/var/run/socket_vmnet" {
		t.Errorf("SocketVmnetPaths = %v", SocketVmnetPaths)
	}
}

// TestSocketVmnetStatus: STATUS passes only when something accepts on the
// socket; otherwise it is CNI code 50 naming the mode, the path and how to
// start socket_vmnet.
func TestSocketVmnetStatus(t *testing.T) {
	dir, err := os.MkdirTemp("", "svs") // short: unix socket paths are limited
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	live := filepath.Join(dir, "live")
	l, err := net.Listen("unix", live)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	if !IsUnixSocket(live) {
		t.Error("IsUnixSocket(a listening socket) = false")
	}
	if err := socketVmnetStatus(live); err != nil {
		t.Errorf("listening socket: %v", err)
	}

	// A socket file left by a socket_vmnet that is gone.
	stale := filepath.Join(dir, "stale")
	sl, err := net.Listen("unix", stale)
	if err != nil {
		t.Fatal(err)
	}
	sl.(*net.UnixListener).SetUnlinkOnClose(false)
	sl.Close()
	regular := filepath.Join(dir, "regular")
	if err := os.WriteFile(regular, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if IsUnixSocket(regular) || IsUnixSocket(filepath.Join(dir, "missing")) {
		t.Error("IsUnixSocket true for a regular file or a missing path")
	}
	for _, path := range []string{stale, regular, filepath.Join(dir, "missing")} {
		err := socketVmnetStatus(path)
		if err == nil {
			t.Errorf("%s: no error", path)
			continue
		}
		if err.Code != types.ErrPluginNotAvailable {
			t.Errorf("%s: code %d", path, err.Code)
		}
		for _, want := range []string{"mode socket", path, "brew services start socket_vmnet", "vmnet-nat"} {
			if !strings.Contains(err.Msg, want) {
				t.Errorf("%s: %q lacks %q", path, err.Msg, want)
			}
		}
	}
}

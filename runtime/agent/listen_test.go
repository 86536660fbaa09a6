package agent

import (
	"context"
	"io"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	api "github.com/macvz/macvz/runtime/agentapi"
)

// TestListenAddr: the listen addresses PortForward takes, and the ones it
// refuses, so that the host cannot have the agent replace a file of the
// guest's (kubelet's own socket, another plugin's).
func TestListenAddr(t *testing.T) {
	a := newAgent(config{socketDir: "/run/macvz", kubeletPluginDir: "/var/lib/kubelet/device-plugins"})
	for addr, want := range map[string]string{
		"unix:/run/macvz/macvz.sock":                                 "/run/macvz/macvz.sock",
		"unix:/var/lib/kubelet/device-plugins/macvz-linux-vm.sock":   "/var/lib/kubelet/device-plugins/macvz-linux-vm.sock",
		"unix:/var/lib/kubelet/device-plugins/../device-plugins/x":   "",
		"unix:/var/lib/kubelet/device-plugins/kubelet.sock":          "",
		"unix:/var/lib/kubelet/device-plugins/nvidia.sock":           "",
		"unix:/var/lib/kubelet/device-plugins/macvz-linux-vm":        "",
		"unix:/var/lib/kubelet/device-plugins/macvz-a/b.sock":        "",
		"unix:/var/lib/kubelet/pod-resources/macvz-x.sock":           "",
		"unix:/var/lib/kubelet/device-plugins/kubelet_internal_ckpt": "",
		"unix:/etc/passwd": "",
		"tcp:127.0.0.1:80": "127.0.0.1:80",
		"tcp:10.0.0.1:80":  "",
	} {
		_, got, err := a.listenAddr(addr)
		if want == "" {
			if status.Code(err) != codes.InvalidArgument {
				t.Errorf("listen %q: %v, want InvalidArgument", addr, err)
			}
			continue
		}
		if err != nil || got != want {
			t.Errorf("listen %q: %q %v, want %q", addr, got, err, want)
		}
	}
}

// TestDialGuest: a dial reaches only kubelet's sockets; a frame naming
// two targets and every other path are InvalidArgument, a socket nobody
// listens on is Unavailable.
func TestDialGuest(t *testing.T) {
	dir := t.TempDir()
	reg := filepath.Join(dir, "device-plugins", "kubelet.sock")
	podres := filepath.Join(dir, "pod-resources", "kubelet.sock")
	ta := startAgent(t, func(c *config) { c.kubeletSockets = []string{reg, podres} })
	ctx := ctxT(t)

	os.MkdirAll(filepath.Dir(reg), 0o700)
	l, err := net.Listen("unix", reg)
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
			go func() { defer c.Close(); io.Copy(c, c) }()
		}
	}()
	c, err := api.DialGuest(ctx, ta.client, "unix:"+reg)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Write([]byte("ping")); err != nil {
		t.Fatal(err)
	}
	c.CloseWrite()
	if b, err := io.ReadAll(c); err != nil || string(b) != "ping" {
		t.Errorf("echo through the dialled socket: %q %v", b, err)
	}
	c.Close()

	if _, err := api.DialGuest(ctx, ta.client, "unix:"+podres); status.Code(err) != codes.Unavailable {
		t.Errorf("dial a socket nobody listens on: %v, want Unavailable", err)
	}
	for _, addr := range []string{"unix:" + filepath.Join(dir, "other.sock"), "unix:/run/macvz/macvz.sock", "tcp:127.0.0.1:80", reg} {
		if _, err := api.DialGuest(ctx, ta.client, addr); status.Code(err) != codes.InvalidArgument {
			t.Errorf("dial %q: %v, want InvalidArgument", addr, err)
		}
	}
	s, err := ta.client.PortForward(ctx)
	if err != nil {
		t.Fatal(err)
	}
	s.Send(&api.PortForwardFrame{Port: 80, Dial: "unix:" + reg})
	if _, err := s.Recv(); status.Code(err) != codes.InvalidArgument {
		t.Errorf("port and dial: %v, want InvalidArgument", err)
	}
}

// TestListenAgainAfterDelete: kubelet deletes the sockets in its
// device-plugin directory when it starts; the agent makes its socket
// again, and a stream that waited before the deletion gets the client of
// the new one.
func TestListenAgainAfterDelete(t *testing.T) {
	defer func(d time.Duration) { socketCheck = d }(socketCheck)
	socketCheck = 20 * time.Millisecond
	plugins := filepath.Join(t.TempDir(), "device-plugins")
	ta := startAgent(t, func(c *config) { c.kubeletPluginDir = plugins })
	ctx, cancel := context.WithTimeout(ctxT(t), 20*time.Second)
	defer cancel()
	path := filepath.Join(plugins, "macvz-linux-vm.sock")

	type res struct {
		c   *api.ForwardConn
		err error
	}
	got := make(chan res, 1)
	go func() {
		c, err := api.AcceptGuest(ctx, ta.client, "unix:"+path)
		got <- res{c, err}
	}()
	waitFile := func(what string, ok func(os.FileInfo) bool) os.FileInfo {
		t.Helper()
		for {
			if fi, err := os.Lstat(path); err == nil && ok(fi) {
				return fi
			}
			select {
			case <-ctx.Done():
				t.Fatalf("%s: %v", what, ctx.Err())
			case <-time.After(10 * time.Millisecond):
			}
		}
	}
	first := waitFile("the socket made", func(fi os.FileInfo) bool { return fi.Mode()&os.ModeSocket != 0 && fi.Mode().Perm() == 0o600 })
	if fi, _ := os.Stat(plugins); fi.Mode().Perm() != 0o750 {
		t.Errorf("the device-plugin directory's mode is %v, want 0750 as kubelet makes it", fi.Mode().Perm())
	}
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	// Made again, and done: root's alone (bound, listening and chmod'ed).
	waitFile("the socket made again, mode 0600", func(fi os.FileInfo) bool { return !sameFile(fi, first) && fi.Mode().Perm() == 0o600 })
	gc, err := net.Dial("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer gc.Close()
	r := <-got
	if r.err != nil {
		t.Fatalf("the waiting stream: %v", r.err)
	}
	defer r.c.Close()
	gc.Write([]byte("hi"))
	b := make([]byte, 2)
	if _, err := io.ReadFull(r.c, b); err != nil || string(b) != "hi" {
		t.Errorf("the host read %q %v", b, err)
	}
	// A file of another's at the path is left alone.
	os.Remove(path)
	os.WriteFile(path, []byte("x"), 0o644)
	time.Sleep(5 * socketCheck)
	if b, err := os.ReadFile(path); err != nil || string(b) != "x" {
		t.Errorf("another's file at the socket's path: %q %v", b, err)
	}
}

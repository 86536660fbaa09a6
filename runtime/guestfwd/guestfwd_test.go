package guestfwd_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/containerd/ttrpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/macvz/macvz/runtime/agent"
	"github.com/macvz/macvz/runtime/agentapi"
	"github.com/macvz/macvz/runtime/guestfwd"
)

// agentClient serves a real agent (its sockets in sockDir) over a unix
// socket and returns a client of it.
func agentClient(t *testing.T, sockDir string) agentapi.AgentClient {
	t.Helper()
	a, err := agent.New(agent.Options{SocketDir: sockDir, Log: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	srv, err := ttrpc.NewServer()
	if err != nil {
		t.Fatal(err)
	}
	a.Register(srv)
	path := filepath.Join(t.TempDir(), "agent.sock")
	l, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(context.Background(), l)
	t.Cleanup(func() { srv.Close() })
	conn, err := net.Dial("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	c := ttrpc.NewClient(conn)
	t.Cleanup(func() { c.Close() })
	return agentapi.NewAgentClient(c)
}

// echoServer is the host end: a unix socket that sends back what it
// reads, prefixed by "host:".
func echoServer(t *testing.T) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "host.sock")
	l, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				io.WriteString(c, "host:")
				io.Copy(c, c)
			}()
		}
	}()
	return path
}

func dialGuest(t *testing.T, path string) net.Conn {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := net.Dial("unix", path)
		if err == nil {
			return c
		}
		if time.Now().After(deadline) {
			t.Fatalf("dialing the guest socket %s: %v", path, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestServeRelaysGuestClients(t *testing.T) {
	sockDir := filepath.Join(t.TempDir(), "run-macvz")
	client := agentClient(t, sockDir)
	host := echoServer(t)
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan struct{})
	go func() {
		defer close(served)
		guestfwd.Serve(ctx, slog.Default(), client, guestfwd.Forward{
			Listen: "unix:" + filepath.Join(sockDir, "macvz.sock"),
			Dial: func(ctx context.Context) (net.Conn, error) {
				var d net.Dialer
				return d.DialContext(ctx, "unix", host)
			},
		})
	}()
	guestSock := filepath.Join(sockDir, "macvz.sock")
	first := dialGuest(t, guestSock)
	first.Close()
	fi, err := os.Stat(guestSock)
	if err != nil {
		t.Fatal(err)
	}
	if perm := fi.Mode().Perm(); perm != 0o600 {
		t.Errorf("guest socket mode %o, want 600 (root only)", perm)
	}

	// Several clients at once, one with 4 MiB (more than the tunnel's
	// window), each getting its own bytes back.
	var wg sync.WaitGroup
	for i := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			msg := []byte(fmt.Sprintf("client %d", i))
			if i == 0 {
				msg = make([]byte, 4<<20)
				rand.Read(msg)
			}
			c := dialGuest(t, guestSock)
			defer c.Close()
			go func() {
				c.Write(msg)
				c.(*net.UnixConn).CloseWrite()
			}()
			got, err := io.ReadAll(c)
			if err != nil {
				t.Errorf("client %d: %v", i, err)
				return
			}
			if want := append([]byte("host:"), msg...); !bytes.Equal(got, want) {
				t.Errorf("client %d: got %d bytes, want %d (its own, echoed by the host)", i, len(got), len(want))
			}
		}()
	}
	wg.Wait()

	cancel()
	select {
	case <-served:
	case <-time.After(10 * time.Second):
		t.Fatal("Serve did not return after its context ended")
	}
}

func TestServeHostDialFails(t *testing.T) {
	sockDir := filepath.Join(t.TempDir(), "run-macvz")
	client := agentClient(t, sockDir)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go guestfwd.Serve(ctx, slog.Default(), client, guestfwd.Forward{
		Listen: "unix:" + filepath.Join(sockDir, "cri.sock"),
		Dial: func(context.Context) (net.Conn, error) {
			return nil, fmt.Errorf("the daemon is not there")
		},
	})
	c := dialGuest(t, filepath.Join(sockDir, "cri.sock"))
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if b, err := io.ReadAll(c); err != nil || len(b) != 0 {
		t.Errorf("a client whose host connection failed: read %q, %v; want its connection ended", b, err)
	}
}

func TestAcceptGuestRejectsAddresses(t *testing.T) {
	sockDir := filepath.Join(t.TempDir(), "run-macvz")
	client := agentClient(t, sockDir)
	for _, addr := range []string{
		"unix:/etc/passwd",
		"unix:" + sockDir + "/../escape.sock",
		"unix:" + sockDir + "/sub/dir.sock",
		"unix:" + sockDir + "/.hidden",
		"unix:" + sockDir + "/",
		"tcp:10.0.0.1:80",
		"tcp:0.0.0.0:80",
		"tcp:127.0.0.1:0",
		"tcp:localhost:80",
		"vsock:3:1024",
		"",
	} {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_, err := agentapi.AcceptGuest(ctx, client, addr)
		cancel()
		if addr == "" {
			// No listen and no port: the old port check answers.
			if status.Code(err) != codes.InvalidArgument {
				t.Errorf("AcceptGuest(%q): %v, want InvalidArgument", addr, err)
			}
			continue
		}
		if status.Code(err) != codes.InvalidArgument {
			t.Errorf("AcceptGuest(%q): %v, want InvalidArgument", addr, err)
		}
	}
	if ents, _ := os.ReadDir(sockDir); len(ents) > 0 {
		t.Errorf("rejected addresses left files in the socket directory: %v", ents)
	}
}

func TestAcceptGuestTCPLoopback(t *testing.T) {
	client := agentClient(t, filepath.Join(t.TempDir(), "run-macvz"))
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close() // the agent listens there now
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	host := echoServer(t)
	go guestfwd.Serve(ctx, slog.Default(), client, guestfwd.Forward{
		Listen: "tcp:" + addr,
		Dial: func(ctx context.Context) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", host)
		},
	})
	var c net.Conn
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if c, err = net.Dial("tcp", addr); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("dialing %s (the guest's loopback port): %v", addr, err)
		}
	}
	defer c.Close()
	io.WriteString(c, "streaming")
	c.(*net.TCPConn).CloseWrite()
	got, _ := io.ReadAll(c)
	if string(got) != "host:streaming" {
		t.Errorf("through the guest's loopback port: %q", got)
	}
}

package imagestore_test

import (
	"context"
	"io"
	"net"
	"sync/atomic"
	"testing"

	"github.com/macvz/macvz/integration/testimage"
	"github.com/macvz/macvz/integration/testregistry"
	"github.com/macvz/macvz/vmimage/imagestore"
)

// connCounter forwards TCP connections to target and counts them.
type connCounter struct {
	ln net.Listener
	n  atomic.Int32
}

func countConns(t testing.TB, target string) *connCounter {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	c := &connCounter{ln: ln}
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			c.n.Add(1)
			go func() {
				defer conn.Close()
				up, err := net.Dial("tcp", target)
				if err != nil {
					return
				}
				defer up.Close()
				go func() {
					io.Copy(up, conn)
					up.(*net.TCPConn).CloseWrite()
				}()
				io.Copy(conn, up)
			}()
		}
	}()
	t.Cleanup(func() { ln.Close() })
	return c
}

func (c *connCounter) host() string { return c.ln.Addr().String() }

// A pull of an image already here (kubelet's imagePullPolicy: Always)
// asks the registry for the manifest again: through the connection the
// previous pull left idle, not a new one.
func TestPullReusesConnections(t *testing.T) {
	reg := testregistry.Start(t, testregistry.Options{})
	img, err := testimage.Tart(testimage.TartOptions{Seed: 31, DiskSize: 2 << 20, ChunkSize: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	push(t, reg, "vm", "v1", img)
	cc := countConns(t, reg.Host())
	s := newStore(t, insecure(cc.host()))
	ref := cc.host() + "/vm:v1"
	mustPull(t, s, ref, nil)
	first := cc.n.Load()
	if first < 1 {
		t.Fatalf("the first pull made %d connections", first)
	}
	for range 3 {
		mustPull(t, s, ref, nil)
	}
	if n := cc.n.Load(); n != first {
		t.Errorf("three pulls of the image already here made %d new connections; want 0 (the first pull made %d)", n-first, first)
	}
}

// The pulls of a store share their connections, never their credentials:
// a pull without them is refused after one with them succeeded, and one
// with them succeeds after a refused one.
func TestPullCredentialsStayWithTheirPull(t *testing.T) {
	reg, img, ref := privateImage(t)
	s := newStore(t, insecure(reg.Host()))
	ctx := context.Background()
	alice := &imagestore.Auth{Username: "alice", Password: "s3cret"}

	got := mustPull(t, s, ref, alice)
	if err := s.Remove(ctx, got.ID()); err != nil {
		t.Fatal(err)
	}
	_, err := s.Pull(ctx, ref, nil)
	wantClass(t, err, "refusal without credentials after a pull with them", denied)
	_, err = s.Pull(ctx, ref, &imagestore.Auth{Username: "alice", Password: "guess"})
	wantClass(t, err, "refusal with a wrong password after a pull with the right one", denied)
	got = mustPull(t, s, ref, alice)
	if got.ID() != img.ConfigDigest().String() {
		t.Errorf("ID %s", got.ID())
	}
}

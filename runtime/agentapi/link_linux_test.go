package agentapi

import (
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// hellosRead counts the HELLO frames that arrive on c until it has been
// quiet for a while.
func hellosRead(c net.Conn) (int, error) {
	fr := newFrameReader(c)
	n := 0
	for {
		c.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
		f, err := fr.next()
		if errors.Is(err, os.ErrDeadlineExceeded) {
			return n, nil
		}
		if err != nil {
			return n, err
		}
		if f.typ == frameHello {
			n++
		}
	}
}

func unixPair(t *testing.T) (host, guest net.Conn) {
	t.Helper()
	ln, err := net.Listen("unix", filepath.Join(t.TempDir(), "port"))
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	host, err = net.Dial("unix", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	guest, err = ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { host.Close(); guest.Close() })
	return host, guest
}

// TestLinkClientHoldsUnreadHello: while the other end reads nothing (a
// guest whose port is not open yet: QEMU leaves the socket alone), the
// HELLO is sent once, not again at every retry; once it is read and no
// WELCOME comes (a guest kernel that dropped it), it is sent again.
func TestLinkClientHoldsUnreadHello(t *testing.T) {
	host, guest := unixPair(t)
	if n, ok := unsentBytes(host); !ok || n != 0 {
		t.Fatalf("unsentBytes of a fresh socket = %d, %v; want 0, true", n, ok)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 150*time.Millisecond)
	defer cancel()
	// 10 ms: the repeats would fit in the socket's buffer (15 of 8 KiB),
	// so a LinkClient that sent them all would not block in a write.
	if _, err := LinkClient(ctx, host, 10*time.Millisecond); err == nil {
		t.Fatal("LinkClient succeeded without a WELCOME")
	}
	if n, err := hellosRead(guest); err != nil || n != 1 {
		t.Fatalf("the unread port got %d HELLOs in 150 ms of 10 ms retries (%v); want 1", n, err)
	}

	host2, guest2 := unixPair(t)
	ctx2, cancel2 := context.WithTimeout(context.Background(), 150*time.Millisecond)
	defer cancel2()
	type count struct {
		n   int
		err error
	}
	done := make(chan count)
	go func() {
		n, err := hellosRead(guest2)
		done <- count{n, err}
	}()
	if _, err := LinkClient(ctx2, host2, 5*time.Millisecond); err == nil {
		t.Fatal("LinkClient succeeded without a WELCOME")
	}
	if c := <-done; c.err != nil || c.n < 3 {
		t.Fatalf("a port that reads and drops got %d HELLOs in 150 ms of 5 ms retries (%v); want them repeated", c.n, c.err)
	}
}

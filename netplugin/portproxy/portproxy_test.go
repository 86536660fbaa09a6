package portproxy

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"
)

var loopback = net.ParseIP("127.0.0.1")

// tcpGuest answers each connection with "hello <remote>", then echoes
// until EOF and answers "bye" (proving the half-close got through).
func tcpGuest(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp4", "127.0.0.1:0")
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
				fmt.Fprintf(c, "hello %s\n", c.RemoteAddr())
				b, _ := io.ReadAll(c)
				fmt.Fprintf(c, "echo %s bye\n", b)
			}()
		}
	}()
	return l.Addr().(*net.TCPAddr).Port
}

func udpGuest(t *testing.T) int {
	t.Helper()
	pc, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pc.Close() })
	go func() {
		buf := make([]byte, 65536)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			pc.WriteTo(append([]byte("re:"), buf[:n]...), from)
		}
	}()
	return pc.LocalAddr().(*net.UDPAddr).Port
}

func TestTCP(t *testing.T) {
	m := New()
	defer m.Close()
	guestPort := tcpGuest(t)
	if err := m.Start("sb1", loopback, []Mapping{{HostIP: "127.0.0.1", ContainerPort: guestPort}}); err != nil {
		t.Fatal(err)
	}
	addrs := m.Addrs("sb1")
	if len(addrs) != 1 {
		t.Fatalf("addrs %v", addrs)
	}
	for i := 0; i < 3; i++ {
		c, err := net.Dial("tcp", addrs[0].String())
		if err != nil {
			t.Fatal(err)
		}
		r := bufio.NewReader(c)
		line, err := r.ReadString('\n')
		if err != nil || !strings.HasPrefix(line, "hello 127.0.0.1:") {
			t.Fatalf("greeting %q, %v", line, err)
		}
		fmt.Fprintf(c, "ping%d", i)
		c.(*net.TCPConn).CloseWrite()
		rest, err := io.ReadAll(r)
		if err != nil || string(rest) != fmt.Sprintf("echo ping%d bye\n", i) {
			t.Fatalf("after half-close: %q, %v", rest, err)
		}
		c.Close()
	}

	// Stop frees the port and cuts open connections.
	open, err := net.Dial("tcp", addrs[0].String())
	if err != nil {
		t.Fatal(err)
	}
	defer open.Close()
	bufio.NewReader(open).ReadString('\n')
	m.Stop("sb1")
	open.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := open.Read(make([]byte, 1)); err == nil {
		t.Fatal("connection still open after Stop")
	}
	if c, err := net.Dial("tcp", addrs[0].String()); err == nil {
		c.Close()
		t.Fatal("port still listening after Stop")
	}
	l, err := net.Listen("tcp", addrs[0].String())
	if err != nil {
		t.Fatalf("port not free after Stop: %v", err)
	}
	l.Close()
	m.Stop("sb1") // idempotent
	if got := m.Sandboxes(); len(got) != 0 {
		t.Fatalf("sandboxes after stop: %v", got)
	}
}

func TestUDP(t *testing.T) {
	m := New()
	m.UDPIdleTimeout = 300 * time.Millisecond
	defer m.Close()
	guestPort := udpGuest(t)
	if err := m.Start("sb", loopback, []Mapping{{Protocol: "UDP", HostIP: "127.0.0.1", ContainerPort: guestPort}}); err != nil {
		t.Fatal(err)
	}
	addr := m.Addrs("sb")[0].String()
	// Two clients, each gets its own answers.
	for round := 0; round < 2; round++ {
		for _, name := range []string{"a", "b"} {
			c, err := net.Dial("udp", addr)
			if err != nil {
				t.Fatal(err)
			}
			c.SetDeadline(time.Now().Add(5 * time.Second))
			msg := fmt.Sprintf("%s%d", name, round)
			if _, err := c.Write([]byte(msg)); err != nil {
				t.Fatal(err)
			}
			buf := make([]byte, 100)
			n, err := c.Read(buf)
			if err != nil || string(buf[:n]) != "re:"+msg {
				t.Fatalf("reply %q, %v", buf[:n], err)
			}
			c.Close()
		}
		time.Sleep(500 * time.Millisecond) // sessions idle out between rounds
	}
	m.Stop("sb")
	pc, err := net.ListenPacket("udp", addr)
	if err != nil {
		t.Fatalf("port not free after Stop: %v", err)
	}
	pc.Close()
}

func TestAllOrNothing(t *testing.T) {
	busy, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	busyPort := busy.Addr().(*net.TCPAddr).Port

	m := New()
	defer m.Close()
	err = m.Start("sb", loopback, []Mapping{
		{HostIP: "127.0.0.1", ContainerPort: 80},
		{HostIP: "127.0.0.1", HostPort: busyPort, ContainerPort: 81},
	})
	if err == nil || !strings.Contains(err.Error(), fmt.Sprint(busyPort)) {
		t.Fatalf("want an error naming port %d, got %v", busyPort, err)
	}
	if len(m.Sandboxes()) != 0 || m.Addrs("sb") != nil {
		t.Fatal("a failed Start left proxies")
	}
	for _, mp := range []Mapping{
		{Protocol: "sctp", ContainerPort: 1},
		{HostIP: "nope", ContainerPort: 1},
		{ContainerPort: 0},
	} {
		if err := m.Start("sb", loopback, []Mapping{mp}); err == nil {
			t.Errorf("%+v: no error", mp)
		}
	}
	if err := m.Start("sb", nil, nil); err == nil {
		t.Error("no guest IP: no error")
	}
}

func TestGuestDown(t *testing.T) {
	// A closed guest port: the client's connection is closed, the proxy
	// keeps serving.
	l, _ := net.Listen("tcp4", "127.0.0.1:0")
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	m := New()
	defer m.Close()
	var mu sync.Mutex
	var logged []string
	m.Logf = func(f string, a ...any) {
		mu.Lock()
		logged = append(logged, fmt.Sprintf(f, a...))
		mu.Unlock()
	}
	if err := m.Start("sb", loopback, []Mapping{{HostIP: "127.0.0.1", ContainerPort: port}}); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 2; i++ {
		c, err := net.Dial("tcp", m.Addrs("sb")[0].String())
		if err != nil {
			t.Fatal(err)
		}
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := c.Read(make([]byte, 1)); err != io.EOF {
			t.Fatalf("read: %v, want EOF", err)
		}
		c.Close()
	}
	m.Stop("sb")
	mu.Lock()
	defer mu.Unlock()
	if len(logged) != 2 || !strings.Contains(logged[0], "refused") {
		t.Fatalf("log: %q", logged)
	}
}

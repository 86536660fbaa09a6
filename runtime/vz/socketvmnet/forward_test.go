//go:build unix

package socketvmnet

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// peer is a stand-in for socket_vmnet: a real unix stream listener that
// speaks its framing, and the VM's end of the datagram pair as the
// framework would hold it.
type peer struct {
	t      *testing.T
	path   string
	srv    net.Conn // socket_vmnet's side of the stream
	vmFile *os.File // what the framework gets
	vm     net.Conn // a dup of vmFile to read and write datagrams
	fwd    *Forwarder
}

func start(t *testing.T) *peer {
	t.Helper()
	dir, err := os.MkdirTemp("", "svn") // short: unix socket paths are limited
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	path := filepath.Join(dir, "socket_vmnet")
	l, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, err := l.Accept()
		if err != nil {
			close(accepted)
			return
		}
		accepted <- c
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	vmFile, fwd, err := Dial(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	srv, ok := <-accepted
	if !ok {
		t.Fatal("no connection accepted")
	}
	vm, err := net.FileConn(vmFile)
	if err != nil {
		t.Fatal(err)
	}
	p := &peer{t: t, path: path, srv: srv, vmFile: vmFile, vm: vm, fwd: fwd}
	t.Cleanup(func() {
		p.fwd.Close()
		p.srv.Close()
		p.closeVM()
	})
	return p
}

func (p *peer) closeVM() {
	p.vm.Close()
	p.vmFile.Close()
}

// frame is an Ethernet-looking frame of n bytes whose content says n and
// seq.
func frame(n int, seq byte) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i*7) ^ seq
	}
	copy(b, strconv.Itoa(n))
	return b
}

// sendStream writes a frame as socket_vmnet would, cut into pieces so
// that the forwarder must reassemble it.
func (p *peer) sendStream(b []byte, pieces int) {
	p.t.Helper()
	msg := binary.BigEndian.AppendUint32(nil, uint32(len(b)))
	msg = append(msg, b...)
	step := max(1, len(msg)/pieces)
	for len(msg) > 0 {
		n := min(step, len(msg))
		if _, err := p.srv.Write(msg[:n]); err != nil {
			p.t.Fatal(err)
		}
		msg = msg[n:]
	}
}

// readStream reads one framed frame as socket_vmnet would.
func (p *peer) readStream() []byte {
	p.t.Helper()
	p.srv.SetReadDeadline(time.Now().Add(5 * time.Second))
	var hdr [4]byte
	if _, err := io.ReadFull(p.srv, hdr[:]); err != nil {
		p.t.Fatal(err)
	}
	b := make([]byte, binary.BigEndian.Uint32(hdr[:]))
	if _, err := io.ReadFull(p.srv, b); err != nil {
		p.t.Fatal(err)
	}
	return b
}

// readVM reads one datagram as the framework would.
func (p *peer) readVM() []byte {
	p.t.Helper()
	p.vm.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 2*MaxFrame)
	n, err := p.vm.Read(buf)
	if err != nil {
		p.t.Fatal(err)
	}
	return buf[:n]
}

// stopped waits for the forwarder to stop and for socket_vmnet's side to
// see its connection closed.
func (p *peer) stopped() error {
	p.t.Helper()
	select {
	case <-p.fwd.Done():
	case <-time.After(5 * time.Second):
		p.t.Fatal("the forwarder did not stop")
	}
	p.srv.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.Copy(io.Discard, p.srv); err != nil {
		p.t.Fatalf("socket_vmnet's side: %v; want EOF", err)
	}
	return p.fwd.Err()
}

// noLeak waits until the goroutine count is back to base.
func noLeak(t *testing.T, base int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for runtime.NumGoroutine() > base {
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<16)
			t.Fatalf("%d goroutines, %d before:\n%s", runtime.NumGoroutine(), base, buf[:runtime.Stack(buf, true)])
		}
		time.Sleep(10 * time.Millisecond)
	}
}

var sizes = []int{MinFrame, 60, 1514, 1522, 9014, MaxFrame}

// TestFramesBothWays: every frame arrives whole and alone, in order, both
// ways; frames too short for an Ethernet header, and a VM datagram too
// long, are dropped without the stream losing its place.
func TestFramesBothWays(t *testing.T) {
	base := runtime.NumGoroutine()
	p := start(t)

	for i, n := range sizes {
		p.sendStream(frame(n, byte(i)), 1+i%4)
		if i == 2 {
			p.sendStream(nil, 1)             // empty: dropped
			p.sendStream(make([]byte, 5), 3) // shorter than a header: dropped
		}
	}
	for i, n := range sizes {
		if got := p.readVM(); !bytes.Equal(got, frame(n, byte(i))) {
			t.Fatalf("to the VM, frame %d: %d bytes, want %d (boundaries or content lost)", i, len(got), n)
		}
	}

	for i, n := range sizes {
		if _, err := p.vm.Write(frame(n, byte(100+i))); err != nil {
			t.Fatal(err)
		}
		if i == 2 {
			for _, bad := range [][]byte{make([]byte, 3), make([]byte, MaxFrame+100)} {
				if _, err := p.vm.Write(bad); err != nil {
					t.Fatal(err)
				}
			}
		}
	}
	for i, n := range sizes {
		if got := p.readStream(); !bytes.Equal(got, frame(n, byte(100+i))) {
			t.Fatalf("to socket_vmnet, frame %d: %d bytes, want %d", i, len(got), n)
		}
	}
	if s := p.fwd.Stats(); s.ToVM != uint64(len(sizes)) || s.FromVM != uint64(len(sizes)) || s.Dropped != 4 {
		t.Errorf("stats %+v; want %d each way and 4 dropped", s, len(sizes))
	}

	if err := p.fwd.Close(); err != nil {
		t.Fatal(err)
	}
	if err := p.stopped(); err != nil {
		t.Errorf("Err after Close = %v", err)
	}
	p.fwd.Close() // idempotent
	p.closeVM()
	noLeak(t, base)
}

// TestHostileLength: a length above MaxFrame ends the connection; the
// forwarder allocates nothing from it.
func TestHostileLength(t *testing.T) {
	for _, n := range []uint32{MaxFrame + 1, 1 << 20, 0xffffffff} {
		t.Run(strconv.Itoa(int(n)), func(t *testing.T) {
			base := runtime.NumGoroutine()
			p := start(t)
			p.sendStream(frame(60, 1), 1)
			if got := p.readVM(); len(got) != 60 {
				t.Fatalf("first frame %d bytes", len(got))
			}
			var before, after runtime.MemStats
			runtime.ReadMemStats(&before)
			if _, err := p.srv.Write(binary.BigEndian.AppendUint32(nil, n)); err != nil {
				t.Fatal(err)
			}
			err := p.stopped()
			runtime.ReadMemStats(&after)
			if !errors.Is(err, ErrFrameTooLarge) {
				t.Fatalf("Err = %v; want ErrFrameTooLarge", err)
			}
			if grew := after.TotalAlloc - before.TotalAlloc; grew > 512<<10 {
				t.Errorf("%d bytes allocated after a %d-byte length", grew, n)
			}
			p.closeVM()
			noLeak(t, base)
		})
	}
}

// TestStreamEnds: socket_vmnet closing the connection, at a frame
// boundary or inside a frame, stops the forwarder, which closes its end
// of the pair: the VM's next send fails.
func TestStreamEnds(t *testing.T) {
	for name, tail := range map[string][]byte{
		"between frames":  nil,
		"inside a length": {0, 0},
		"inside a frame":  append(binary.BigEndian.AppendUint32(nil, 100), make([]byte, 40)...),
	} {
		t.Run(name, func(t *testing.T) {
			base := runtime.NumGoroutine()
			p := start(t)
			if len(tail) > 0 {
				p.srv.Write(tail)
			}
			p.srv.(*net.UnixConn).CloseWrite()
			err := p.stopped()
			if err == nil || !(errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF)) {
				t.Fatalf("Err = %v; want EOF", err)
			}
			if _, err := p.vm.Write(frame(60, 1)); err == nil {
				t.Error("the VM's send succeeded after the forwarder stopped")
			}
			p.closeVM()
			noLeak(t, base)
		})
	}
}

// TestVMEndCloses: once the VM's end is closed (the VM is gone), the
// forwarder stops at the next frame for it and closes the stream. (On
// Linux a datagram socket's read does not wake when its peer closes; the
// machine closes the forwarder when the VM ends anyway.)
func TestVMEndCloses(t *testing.T) {
	base := runtime.NumGoroutine()
	p := start(t)
	p.closeVM()
	p.sendStream(frame(60, 1), 1)
	err := p.stopped()
	if err == nil || !strings.Contains(err.Error(), "to the VM") {
		t.Fatalf("Err = %v; want the failed write to the VM", err)
	}
	noLeak(t, base)
}

// TestDial: the pair's buffers, and a socket nobody listens on.
func TestDial(t *testing.T) {
	p := start(t)
	if runtime.GOOS == "linux" {
		// Linux caps a size at net.core.{w,r}mem_max and reports twice
		// what it keeps.
		for _, o := range []struct {
			opt, want int
			max       string
		}{{syscall.SO_SNDBUF, SendBuffer, "wmem_max"}, {syscall.SO_RCVBUF, ReceiveBuffer, "rmem_max"}} {
			b, err := os.ReadFile("/proc/sys/net/core/" + o.max)
			if err != nil {
				t.Skip(err)
			}
			limit, _ := strconv.Atoi(strings.TrimSpace(string(b)))
			got, err := syscall.GetsockoptInt(int(p.vmFile.Fd()), syscall.SOL_SOCKET, o.opt)
			if err != nil {
				t.Fatal(err)
			}
			if want := 2 * min(o.want, limit); got != want {
				t.Errorf("option %d: %d, want %d", o.opt, got, want)
			}
		}
	}
	if typ, err := syscall.GetsockoptInt(int(p.vmFile.Fd()), syscall.SOL_SOCKET, syscall.SO_TYPE); err != nil || typ != syscall.SOCK_DGRAM {
		t.Errorf("the VM's end is type %d (%v), want a datagram socket", typ, err)
	}

	missing := filepath.Join(filepath.Dir(p.path), "nothing")
	if _, _, err := Dial(context.Background(), missing); err == nil || !strings.Contains(err.Error(), missing) {
		t.Errorf("Dial(%s) = %v; want an error naming the path", missing, err)
	}
}

// noBufsConn is the VM's end on darwin when its receive buffer is full:
// writes fail with ENOBUFS (the kernel does not block the writer) until
// fail reaches 0.
type noBufsConn struct {
	net.Conn
	fail   int
	writes chan []byte
}

func (c *noBufsConn) Write(b []byte) (int, error) {
	if c.fail != 0 {
		if c.fail > 0 {
			c.fail--
		}
		return 0, &net.OpError{Op: "write", Net: "unixgram", Err: os.NewSyscallError("write", syscall.ENOBUFS)}
	}
	c.writes <- append([]byte(nil), b...)
	return len(b), nil
}

// TestNoBufs: a frame the VM's full buffer refuses for a moment is
// retried; one it keeps refusing is dropped, and forwarding goes on.
func TestNoBufs(t *testing.T) {
	base := runtime.NumGoroutine()
	vmSide, _ := net.Pipe() // only read from, and closed, by the forwarder
	srv, stream := net.Pipe()
	vm := &noBufsConn{Conn: vmSide, fail: 3, writes: make(chan []byte, 4)}
	f := Forward(vm, stream)
	send := func(b []byte) {
		t.Helper()
		if _, err := srv.Write(append(binary.BigEndian.AppendUint32(nil, uint32(len(b))), b...)); err != nil {
			t.Fatal(err)
		}
	}
	send(frame(60, 1))
	if got := <-vm.writes; !bytes.Equal(got, frame(60, 1)) {
		t.Fatal("retried frame differs")
	}
	vm.fail = -1 // from now on: always full
	send(frame(60, 2))
	deadline := time.Now().Add(5 * time.Second)
	for f.Stats().Dropped != 1 {
		if time.Now().After(deadline) {
			t.Fatalf("stats %+v; want the frame dropped", f.Stats())
		}
		time.Sleep(time.Millisecond)
	}
	vm.fail = 0
	send(frame(60, 3))
	if got := <-vm.writes; !bytes.Equal(got, frame(60, 3)) {
		t.Fatal("the frame after a drop differs")
	}
	if s := f.Stats(); s.ToVM != 2 || s.Dropped != 1 {
		t.Errorf("stats %+v", s)
	}
	f.Close()
	srv.Close()
	if f.Err() != nil {
		t.Errorf("Err after Close = %v", f.Err())
	}
	noLeak(t, base)
}

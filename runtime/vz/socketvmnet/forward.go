// Package socketvmnet connects a Virtualization.framework VM's NIC to
// socket_vmnet, the root helper (lima's, Apache-2.0, in Homebrew) that
// runs vmnet.framework's shared or bridged network and serves it to
// unprivileged VM processes on a unix socket.
//
// The two ends speak differently. The framework's file-handle attachment
// (VZFileHandleNetworkDeviceAttachment) wants a connected datagram socket,
// one Ethernet frame per datagram. socket_vmnet listens on a unix stream
// socket and sends and expects each frame behind its length, a 4-byte
// big-endian integer (the framing of QEMU's stream netdev). Dial connects
// to the stream, makes a unix datagram socketpair, hands the VM one end
// and runs a Forwarder between the other end and the stream, until either
// side ends or the Forwarder is closed (with the VM).
//
// What arrives on the stream is untrusted (anything that can connect to
// the socket's path can be at the other end): a length above MaxFrame
// ends the connection (the stream cannot be resynchronised, and nothing
// is ever allocated from a length), a frame shorter than an Ethernet
// header is dropped, and the buffers are fixed when the Forwarder starts.
//
// The forwarding is platform-neutral and tested on Linux against a real
// stream server and socketpair; the darwin glue is runtime/vz's
// socketnic_darwin.go.
package socketvmnet

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

const (
	// MaxFrame is the largest frame taken from or given to socket_vmnet,
	// in bytes. An Ethernet frame of a 1500-byte MTU with a VLAN tag is
	// 1522 bytes; vmnet and the attachment can run larger MTUs, and
	// socket_vmnet itself reads a frame into a 64 KiB buffer, so nothing
	// longer than 65535 bytes can be a frame of either side.
	MaxFrame = 65535
	// MinFrame is an Ethernet header: destination, source, EtherType.
	MinFrame = 14
	// SendBuffer and ReceiveBuffer are the SO_SNDBUF and SO_RCVBUF set on
	// both ends of the datagram socketpair: the sizes Apple recommends
	// for VZFileHandleNetworkDeviceAttachment's socket, which lima sets
	// on both ends too.
	SendBuffer    = 1 << 20
	ReceiveBuffer = 4 << 20

	headerLen = 4
	// A datagram write can fail with ENOBUFS on darwin when the reader's
	// buffer is full (the kernel does not block the writer): retry a few
	// times, then drop the frame as a full NIC queue would, rather than
	// stop reading the stream (socket_vmnet writes to every VM's
	// connection from one queue, so a VM that does not read must not
	// hold it up).
	noBufsRetries = 20
	noBufsDelay   = 100 * time.Microsecond
)

var (
	// ErrFrameTooLarge: socket_vmnet's side announced a frame longer
	// than MaxFrame; the connection is ended.
	ErrFrameTooLarge = errors.New("socket_vmnet: frame longer than the largest Ethernet frame taken")
	// ErrClosed is the Forwarder's end when Close stopped it.
	ErrClosed = errors.New("socket_vmnet: forwarder closed")
)

// Stats count frames.
type Stats struct {
	ToVM, FromVM uint64 // forwarded
	Dropped      uint64 // too short, too long, or the VM's buffer full
}

// Forwarder relays frames between the VM's datagram socket and
// socket_vmnet's stream. It owns both connections and closes them when it
// stops: when either side ends or fails, on a bad frame length, or on
// Close.
type Forwarder struct {
	vm, stream net.Conn

	once     sync.Once
	mu       sync.Mutex
	err      error
	stopping chan struct{}
	running  atomic.Int32
	done     chan struct{}

	toVM, fromVM, dropped atomic.Uint64
}

// Forward starts relaying between vm (a connected datagram socket: one
// frame per Read and Write) and stream (socket_vmnet's connection).
func Forward(vm, stream net.Conn) *Forwarder {
	f := &Forwarder{vm: vm, stream: stream, stopping: make(chan struct{}), done: make(chan struct{})}
	f.running.Store(2)
	go f.streamToVM()
	go f.vmToStream()
	return f
}

// Done is closed when the Forwarder has stopped and both its goroutines
// have returned.
func (f *Forwarder) Done() <-chan struct{} { return f.done }

// Err says why the Forwarder stopped: nil while it runs and after Close,
// else the first failure (io.EOF wrapped when socket_vmnet closed the
// connection, ErrFrameTooLarge wrapped for a bad length).
func (f *Forwarder) Err() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if errors.Is(f.err, ErrClosed) {
		return nil
	}
	return f.err
}

// Stats returns the frame counts so far.
func (f *Forwarder) Stats() Stats {
	return Stats{ToVM: f.toVM.Load(), FromVM: f.fromVM.Load(), Dropped: f.dropped.Load()}
}

// Close stops the Forwarder, closes both connections and waits for its
// goroutines. It is idempotent.
func (f *Forwarder) Close() error {
	f.stop(ErrClosed)
	<-f.done
	return nil
}

// stop records the first reason and closes both connections, which ends
// whichever goroutine is still blocked on one of them.
func (f *Forwarder) stop(err error) {
	f.once.Do(func() {
		f.mu.Lock()
		f.err = err
		f.mu.Unlock()
		close(f.stopping)
		f.vm.Close()
		f.stream.Close()
	})
}

func (f *Forwarder) exit() {
	if f.running.Add(-1) == 0 {
		close(f.done)
	}
}

// streamToVM reads length-prefixed frames from socket_vmnet and writes
// each as one datagram to the VM.
func (f *Forwarder) streamToVM() {
	defer f.exit()
	var hdr [headerLen]byte
	buf := make([]byte, MaxFrame)
	for {
		if _, err := io.ReadFull(f.stream, hdr[:]); err != nil {
			f.stop(fmt.Errorf("socket_vmnet: reading a frame's length: %w", err))
			return
		}
		n := binary.BigEndian.Uint32(hdr[:])
		if n > MaxFrame {
			f.stop(fmt.Errorf("%w: %d bytes announced (at most %d)", ErrFrameTooLarge, n, MaxFrame))
			return
		}
		if _, err := io.ReadFull(f.stream, buf[:n]); err != nil {
			f.stop(fmt.Errorf("socket_vmnet: reading a %d-byte frame: %w", n, err))
			return
		}
		if n < MinFrame {
			f.dropped.Add(1)
			continue
		}
		if err := f.sendVM(buf[:n]); err != nil {
			f.stop(fmt.Errorf("socket_vmnet: writing a frame to the VM: %w", err))
			return
		}
	}
}

// sendVM writes one datagram to the VM; a full buffer (ENOBUFS) is
// retried briefly, then the frame is dropped.
func (f *Forwarder) sendVM(frame []byte) error {
	for try := 0; ; try++ {
		_, err := f.vm.Write(frame)
		if err == nil {
			f.toVM.Add(1)
			return nil
		}
		if !errors.Is(err, syscall.ENOBUFS) {
			return err
		}
		if try == noBufsRetries {
			f.dropped.Add(1)
			return nil
		}
		select {
		case <-f.stopping:
			return ErrClosed
		default:
		}
		time.Sleep(noBufsDelay)
	}
}

// vmToStream reads the VM's datagrams and writes each to socket_vmnet
// behind its length, header and frame in one write (socket_vmnet reads a
// frame's bytes with a single read after its length, so they must not
// trail behind in a second write).
func (f *Forwarder) vmToStream() {
	defer f.exit()
	// One byte more than MaxFrame: a datagram that fills it was longer
	// (and truncated), and is dropped.
	buf := make([]byte, headerLen+MaxFrame+1)
	for {
		n, err := f.vm.Read(buf[headerLen:])
		if err != nil {
			f.stop(fmt.Errorf("socket_vmnet: reading a frame from the VM: %w", err))
			return
		}
		if n < MinFrame || n > MaxFrame {
			f.dropped.Add(1)
			continue
		}
		binary.BigEndian.PutUint32(buf[:headerLen], uint32(n))
		if _, err := f.stream.Write(buf[:headerLen+n]); err != nil {
			f.stop(fmt.Errorf("socket_vmnet: writing a frame: %w", err))
			return
		}
		f.fromVM.Add(1)
	}
}

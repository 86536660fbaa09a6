package qemu

// A small QMP (QEMU Machine Protocol) client.
//
// Why not a library: the module proxy does serve
// github.com/digitalocean/go-qemu (qmp.SocketMonitor), but its Run takes no
// context (a wedged QEMU blocks the caller forever), commands carry no id,
// and its event channel is unbuffered and shared with the reader, so an
// event nobody reads stalls every later command reply. We need exactly
// four things — the greeting and qmp_capabilities, "execute" with an id and
// a context, asynchronous events (SHUTDOWN tells why a guest stopped), and
// noticing EOF when QEMU exits — which fit in the code below. The protocol
// is specified in QEMU's docs/interop/qmp-spec.rst: one JSON object per
// message; a server greeting {"QMP": {...}}; replies {"return": ..., "id"}
// or {"error": {"class", "desc"}, "id"}; events {"event", "data",
// "timestamp"}.

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"sync"
	"syscall"
	"time"
)

// qmpEvent is an asynchronous QMP event.
type qmpEvent struct {
	Event string          `json:"event"`
	Data  json.RawMessage `json:"data"`
}

// qmpError is an error reply from QEMU.
type qmpError struct {
	Class string `json:"class"`
	Desc  string `json:"desc"`
}

func (e *qmpError) Error() string { return e.Class + ": " + e.Desc }

type qmpReply struct {
	Return json.RawMessage
	Err    *qmpError
}

// qmpMessage is any message from the server: exactly one of the fields
// that tell them apart is set.
type qmpMessage struct {
	QMP    json.RawMessage `json:"QMP"`
	Event  string          `json:"event"`
	Data   json.RawMessage `json:"data"`
	Return json.RawMessage `json:"return"`
	Error  *qmpError       `json:"error"`
	ID     json.RawMessage `json:"id"`
}

// errQMPClosed is returned for commands on a connection that has ended
// (QEMU exited or the connection was closed).
var errQMPClosed = errors.New("qmp: connection closed")

// qmpConn is one QMP connection. Execute may be called concurrently.
type qmpConn struct {
	conn net.Conn

	wmu sync.Mutex // serialises writes

	mu      sync.Mutex
	nextID  uint64
	pending map[string]chan qmpReply
	closed  bool
	err     error

	onEvent func(qmpEvent) // called from the reader goroutine; must not block
	done    chan struct{}  // closed when the reader has stopped
}

// dialQMP connects to a QMP socket, reads the greeting and leaves command
// mode negotiation done. onEvent, if set, receives every event.
func dialQMP(ctx context.Context, path string, onEvent func(qmpEvent)) (*qmpConn, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", path)
	if err != nil {
		return nil, err
	}
	q, err := newQMP(ctx, conn, onEvent)
	if err != nil {
		conn.Close()
		return nil, err
	}
	return q, nil
}

func newQMP(ctx context.Context, conn net.Conn, onEvent func(qmpEvent)) (*qmpConn, error) {
	r := bufio.NewReader(conn)
	// The greeting comes first; bound the wait by ctx.
	stop := context.AfterFunc(ctx, func() { conn.SetReadDeadline(time.Unix(1, 0)) })
	line, err := r.ReadBytes('\n')
	stop()
	conn.SetReadDeadline(time.Time{})
	if err != nil {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		return nil, fmt.Errorf("qmp: reading the greeting: %w", err)
	}
	var greet qmpMessage
	if err := json.Unmarshal(line, &greet); err != nil || greet.QMP == nil {
		return nil, fmt.Errorf("qmp: unexpected greeting %q", line)
	}
	q := &qmpConn{
		conn:    conn,
		pending: map[string]chan qmpReply{},
		onEvent: onEvent,
		done:    make(chan struct{}),
	}
	go q.read(r)
	if _, err := q.execute(ctx, "qmp_capabilities", nil); err != nil {
		q.Close()
		return nil, err
	}
	return q, nil
}

func (q *qmpConn) read(r *bufio.Reader) {
	defer close(q.done)
	var err error
	for {
		var line []byte
		line, err = r.ReadBytes('\n')
		if len(line) > 0 {
			var m qmpMessage
			if json.Unmarshal(line, &m) == nil {
				q.dispatch(&m)
			}
		}
		if err != nil {
			break
		}
	}
	q.mu.Lock()
	q.closed = true
	if q.err == nil {
		q.err = err
	}
	for id, ch := range q.pending {
		close(ch)
		delete(q.pending, id)
	}
	q.mu.Unlock()
}

func (q *qmpConn) dispatch(m *qmpMessage) {
	if m.Event != "" {
		if q.onEvent != nil {
			q.onEvent(qmpEvent{Event: m.Event, Data: m.Data})
		}
		return
	}
	id, err := strconv.Unquote(string(m.ID))
	if err != nil {
		return // replies always carry our string ids
	}
	q.mu.Lock()
	ch := q.pending[id]
	delete(q.pending, id)
	q.mu.Unlock()
	if ch != nil {
		ch <- qmpReply{Return: m.Return, Err: m.Error}
	}
}

// execute runs one command and returns its "return" value.
func (q *qmpConn) execute(ctx context.Context, cmd string, args any) (json.RawMessage, error) {
	return q.send(ctx, cmd, args, func(b []byte) error {
		_, err := q.conn.Write(b)
		return err
	})
}

func (q *qmpConn) send(ctx context.Context, cmd string, args any, write func([]byte) error) (json.RawMessage, error) {
	q.mu.Lock()
	if q.closed {
		q.mu.Unlock()
		return nil, errQMPClosed
	}
	q.nextID++
	id := strconv.FormatUint(q.nextID, 10)
	ch := make(chan qmpReply, 1)
	q.pending[id] = ch
	q.mu.Unlock()

	msg := struct {
		Execute   string `json:"execute"`
		Arguments any    `json:"arguments,omitempty"`
		ID        string `json:"id"`
	}{cmd, args, id}
	b, err := json.Marshal(msg)
	if err != nil {
		q.forget(id)
		return nil, err
	}
	b = append(b, '\n')
	q.wmu.Lock()
	if dl, ok := ctx.Deadline(); ok {
		q.conn.SetWriteDeadline(dl)
	}
	err = write(b)
	q.conn.SetWriteDeadline(time.Time{})
	q.wmu.Unlock()
	if err != nil {
		q.forget(id)
		return nil, fmt.Errorf("qmp %s: %w", cmd, err)
	}
	select {
	case r, ok := <-ch:
		if !ok {
			return nil, fmt.Errorf("qmp %s: %w", cmd, errQMPClosed)
		}
		if r.Err != nil {
			return nil, fmt.Errorf("qmp %s: %w", cmd, r.Err)
		}
		return r.Return, nil
	case <-ctx.Done():
		q.forget(id)
		return nil, fmt.Errorf("qmp %s: %w", cmd, ctx.Err())
	}
}

func (q *qmpConn) forget(id string) {
	q.mu.Lock()
	delete(q.pending, id)
	q.mu.Unlock()
}

// Done is closed once the connection has ended.
func (q *qmpConn) Done() <-chan struct{} { return q.done }

// Close ends the connection.
func (q *qmpConn) Close() error {
	err := q.conn.Close()
	<-q.done
	return err
}

// executeFD runs a command with f passed alongside it (SCM_RIGHTS), as
// "getfd" and "add-fd" expect. The caller keeps and closes its f.
func (q *qmpConn) executeFD(ctx context.Context, cmd string, args any, f *os.File) (json.RawMessage, error) {
	uc, ok := q.conn.(*net.UnixConn)
	if !ok {
		return nil, fmt.Errorf("qmp %s: passing a file needs a unix socket", cmd)
	}
	return q.send(ctx, cmd, args, func(b []byte) error {
		_, _, err := uc.WriteMsgUnix(b, syscall.UnixRights(int(f.Fd())), nil)
		return err
	})
}

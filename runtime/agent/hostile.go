//go:build hostile && linux

package agent

// The hostile mode of the agent, for the test guest only (built with
// -tags hostile; the production agent has hostile_off.go instead): the
// agent attacks the host from inside the VM, so that integration tests
// can check the host holds (integration/hostile_test.go). The attacks
// are chosen on the kernel command line:
//
//	macvz.hostile=written,ip,noise,garbage,console
//	macvz.hostile.flood=MiB   how much the console attack writes (100)
//	macvz.hostile.junk=N      ttrpc messages on unknown streams per session (noise; 5000)
//
//   - written: WriteStdin answers a count it could not have written
//     (len+1000, then 2^32-1, alternately);
//   - ip: Info lists false addresses on the pod's NIC and on a second
//     interface with the same MAC (loopback, a neighbour in the pod
//     subnet, QEMU's NAT address, addresses outside the subnet);
//   - noise: after each WELCOME, bytes the link framing must skip
//     (random bytes, frames with a bad CRC, an oversized length, an
//     unknown type, other sessions) and well-formed ttrpc messages on
//     streams the host never opened; the session then goes on;
//   - garbage: after each WELCOME, a well-framed ttrpc answer to the
//     host's first call that is not a protobuf, then a ttrpc header
//     announcing a 4 GiB message: the session cannot work;
//   - console: once the host has connected, write MiBs of text to
//     /dev/console, then write /run/macvz-hostile/console-done.

import (
	"bytes"
	"crypto/rand"
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"io"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	api "github.com/macvz/macvz/runtime/agentapi"
)

// hostileCmdlineKey is the kernel command line parameter that lists the
// attacks.
const hostileCmdlineKey = "macvz.hostile"

// hostileDoneDir is where the agent reports finished attacks.
const hostileDoneDir = "/run/macvz-hostile"

type hostileConfig struct {
	attacks  map[string]bool
	floodMiB int
	junk     int
}

var (
	hostileMu  sync.Mutex
	hostileCfg *hostileConfig
	// hostileConnected is closed at the first WELCOME.
	hostileConnected     = make(chan struct{})
	hostileConnectedOnce sync.Once
	hostileWrites        atomic.Uint64
)

// parseHostile reads the attacks from a kernel command line.
func parseHostile(cmdline string) *hostileConfig {
	c := &hostileConfig{attacks: map[string]bool{}, floodMiB: 100, junk: 5000}
	for _, f := range strings.Fields(cmdline) {
		k, v, _ := strings.Cut(f, "=")
		switch k {
		case hostileCmdlineKey:
			for _, a := range strings.Split(v, ",") {
				if a != "" {
					c.attacks[a] = true
				}
			}
		case hostileCmdlineKey + ".flood":
			if n, err := strconv.Atoi(v); err == nil && n >= 0 {
				c.floodMiB = n
			}
		case hostileCmdlineKey + ".junk":
			if n, err := strconv.Atoi(v); err == nil && n >= 0 {
				c.junk = n
			}
		}
	}
	return c
}

// hostile returns the configuration, reading /proc/cmdline the first
// time (after init mounted /proc).
func hostile() *hostileConfig {
	hostileMu.Lock()
	defer hostileMu.Unlock()
	if hostileCfg == nil {
		b, _ := os.ReadFile("/proc/cmdline")
		hostileCfg = parseHostile(string(b))
	}
	return hostileCfg
}

func hostileOn(attack string) bool { return hostile().attacks[attack] }

func hostileStart(log *slog.Logger) {
	c := hostile()
	if len(c.attacks) == 0 {
		return
	}
	log.Warn("HOSTILE test agent: attacking the host", "attacks", fmt.Sprint(c.attacks), "flood_mib", c.floodMiB, "junk", c.junk)
	if c.attacks["console"] {
		go floodConsole(log, c.floodMiB)
	}
}

func hostileWritten(n, sent int) uint32 {
	if !hostileOn("written") {
		return uint32(n)
	}
	if hostileWrites.Add(1)%2 == 1 {
		return uint32(sent + 1000)
	}
	return ^uint32(0)
}

// hostileClaims are the false addresses the ip attack reports.
var hostileClaims = []string{
	"127.0.0.1/8",      // the host's loopback
	"10.88.0.2/16",     // a neighbour in the test's pod subnet
	"10.0.2.15/24",     // QEMU's user-mode NAT guest address
	"192.0.2.66/24",    // outside the pod subnet (TEST-NET-1)
	"10.88.255.254/16", // the subnet's last address
	"::1/128",
	"2001:db8::66/64",
}

func hostileInterfaces(ifs []*api.NetInterface) []*api.NetInterface {
	if !hostileOn("ip") {
		return ifs
	}
	out := make([]*api.NetInterface, 0, len(ifs)+1)
	for _, ifc := range ifs {
		if ifc.Mac == "" || ifc.Name == "lo" {
			out = append(out, ifc)
			continue
		}
		// The claims come first, the real addresses after them, and a
		// second interface with the same MAC says the same.
		fake := &api.NetInterface{Name: ifc.Name, Mac: ifc.Mac, Up: true, Addresses: append(append([]string(nil), hostileClaims...), ifc.Addresses...)}
		out = append(out, fake, &api.NetInterface{Name: "eth9", Mac: strings.ToUpper(ifc.Mac), Up: true, Addresses: hostileClaims})
	}
	return out
}

// hostilePort wraps the agent's virtio-serial port: after every WELCOME
// the agent writes, the noise and garbage attacks write theirs.
func hostilePort(log *slog.Logger, open func() (io.ReadWriteCloser, error)) func() (io.ReadWriteCloser, error) {
	return func() (io.ReadWriteCloser, error) {
		p, err := open()
		if err != nil {
			return nil, err
		}
		return &hostileRW{ReadWriteCloser: p, log: log}, nil
	}
}

type hostileRW struct {
	io.ReadWriteCloser
	log *slog.Logger
	// last is the last session whose first WELCOME got the attack.
	last uint32
}

// Link framing (runtime/agentapi/link.go), written here by hand so the
// attacks can break it.
const (
	hLinkHeader = 20
	hMaxPayload = api.MaxLinkPayload
	hWelcome    = 2
	hData       = 3
)

var hCRC = crc32.MakeTable(crc32.Castagnoli)

// hFrame is a frame; crcDelta != 0 spoils its CRC, length != nil
// replaces its length field.
func hFrame(typ byte, session uint32, payload []byte, crcDelta uint32, length *uint32) []byte {
	h := make([]byte, hLinkHeader, hLinkHeader+len(payload))
	copy(h, "MVZL")
	h[4] = typ
	binary.BigEndian.PutUint32(h[8:], session)
	n := uint32(len(payload))
	if length != nil {
		n = *length
	}
	binary.BigEndian.PutUint32(h[12:], n)
	crc := crc32.Update(0, hCRC, h[:16])
	crc = crc32.Update(crc, hCRC, payload)
	binary.BigEndian.PutUint32(h[16:], crc+crcDelta)
	return append(h, payload...)
}

// ttrpcHeader is a ttrpc message header (length, stream, type, flags).
func ttrpcHeader(length, stream uint32, typ byte) []byte {
	b := make([]byte, 10)
	binary.BigEndian.PutUint32(b, length)
	binary.BigEndian.PutUint32(b[4:], stream)
	b[8] = typ
	return b
}

func randBytes(n int) []byte {
	b := make([]byte, n)
	rand.Read(b)
	return b
}

// welcomeSession reports whether b is a handshake carrying a WELCOME
// (a flush of zeros, then the frame) and for which session.
func welcomeSession(b []byte) (uint32, bool) {
	if len(b) < hLinkHeader {
		return 0, false
	}
	h := b[len(b)-hLinkHeader:]
	if !bytes.Equal(h[:4], []byte("MVZL")) || h[4] != hWelcome || binary.BigEndian.Uint32(h[12:]) != 0 {
		return 0, false
	}
	return binary.BigEndian.Uint32(h[8:]), true
}

func (p *hostileRW) Write(b []byte) (int, error) {
	n, err := p.ReadWriteCloser.Write(b)
	if err != nil {
		return n, err
	}
	session, ok := welcomeSession(b)
	if !ok {
		return n, nil
	}
	hostileConnectedOnce.Do(func() { close(hostileConnected) })
	first := session != p.last
	p.last = session
	c := hostile()
	var out []byte
	if c.attacks["noise"] {
		out = append(out, noise(session, first, c.junk)...)
	}
	if c.attacks["garbage"] && first {
		// The host's first call on a session is stream 1: answer it
		// with bytes that are no protobuf, then announce a 4 GiB
		// message.
		out = append(out, hFrame(hData, session, append(ttrpcHeader(16, 1, 2), randBytes(16)...), 0, nil)...)
		out = append(out, hFrame(hData, session, ttrpcHeader(^uint32(0), 3, 2), 0, nil)...)
	}
	if len(out) > 0 {
		// Inside the listener's write lock: nothing else is cut in two.
		if _, err := p.ReadWriteCloser.Write(out); err != nil {
			p.log.Warn("hostile: writing to the agent channel", "err", err)
		} else {
			p.log.Warn("hostile: attacked the agent channel", "session", fmt.Sprintf("%08x", session), "bytes", len(out))
		}
	}
	return n, nil
}

// noise is what the link framing must skip, and (on a session's first
// WELCOME) ttrpc messages on streams the host never opened.
func noise(session uint32, first bool, junk int) []byte {
	var b []byte
	b = append(b, randBytes(4096)...)
	b = append(b, "MVZLMVZLMVZ"...)
	// A bad CRC, in a frame that looks like a ttrpc answer to stream 1.
	b = append(b, hFrame(hData, session, append(ttrpcHeader(4, 1, 2), 1, 2, 3, 4), 1, nil)...)
	// Lengths past the maximum, then data.
	for _, l := range []uint32{hMaxPayload + 1, 1 << 31, ^uint32(0)} {
		l := l
		b = append(b, hFrame(hData, session, nil, 0, &l)...)
		b = append(b, randBytes(512)...)
	}
	// A length that promises more than follows (the next frame's magic
	// comes first).
	short := uint32(hMaxPayload)
	b = append(b, hFrame(hData, session, randBytes(100), 0, &short)...)
	// An unknown type, nonzero reserved bytes.
	b = append(b, hFrame(9, session, []byte("x"), 0, nil)...)
	f := hFrame(hData, session, []byte("x"), 0, nil)
	f[6] = 1
	b = append(b, f...)
	// Valid frames of other sessions, a WELCOME for another session.
	b = append(b, hFrame(hData, session^0x5a5a5a5a, ttrpcHeader(^uint32(0), 1, 2), 0, nil)...)
	b = append(b, hFrame(hWelcome, session+1, nil, 0, nil)...)
	b = append(b, randBytes(linkFlushSizeHostile)...)
	if first && junk > 0 {
		// ttrpc messages on even streams, which a client never opens.
		var msgs []byte
		for i := range junk {
			msgs = append(msgs, ttrpcHeader(0, uint32(2*(i+1)), 2)...)
		}
		for len(msgs) > 0 {
			k := min(len(msgs), hMaxPayload/10*10)
			b = append(b, hFrame(hData, session, msgs[:k], 0, nil)...)
			msgs = msgs[k:]
		}
	}
	return b
}

// linkFlushSizeHostile: enough random bytes to complete any frame the
// noise left open.
const linkFlushSizeHostile = hLinkHeader + hMaxPayload

// floodConsole writes mib MiB of text to the console once the host has
// connected, then reports in hostileDoneDir.
func floodConsole(log *slog.Logger, mib int) {
	<-hostileConnected
	time.Sleep(time.Second)
	f, err := os.OpenFile("/dev/console", os.O_WRONLY, 0)
	if err != nil {
		log.Error("hostile: opening the console", "err", err)
		return
	}
	defer f.Close()
	start := time.Now()
	line := make([]byte, 0, 128)
	chunk := make([]byte, 0, 64<<10)
	var written int64
	total := int64(mib) << 20
	for i := 0; written < total; {
		chunk = chunk[:0]
		for len(chunk)+128 <= cap(chunk) {
			line = fmt.Appendf(line[:0], "hostile console flood %09d ", i)
			for len(line) < 127 {
				line = append(line, 'x')
			}
			chunk = append(chunk, append(line, '\n')...)
			i++
		}
		k, err := f.Write(chunk)
		written += int64(k)
		if err != nil {
			log.Error("hostile: writing to the console", "err", err)
			break
		}
	}
	took := time.Since(start)
	os.MkdirAll(hostileDoneDir, 0o755)
	os.WriteFile(hostileDoneDir+"/console-done", fmt.Appendf(nil, "%d bytes in %v\n", written, took.Round(time.Millisecond)), 0o644)
	log.Warn("hostile: console flood done", "bytes", written, "took", took)
}

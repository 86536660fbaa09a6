// Package portproxy forwards host ports to a guest's ports in user space:
// macvz's hostPorts on macOS, where the VMs sit behind vmnet and the host
// has no DNAT the daemon can use. The daemon starts a sandbox's proxies
// once it knows the guest's IP and stops them on StopPodSandbox.
//
// TCP connections are spliced with half-close passed through; UDP is
// relayed per client address (one socket to the guest per client, dropped
// after UDPIdleTimeout without traffic). The proxied connection comes from
// the host's address, not the client's, as with any user-space proxy.
//
// The package is platform-neutral and tested on Linux.
package portproxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/macvz/macvz/internal/relay"
)

// Mapping is one hostPort.
type Mapping struct {
	// Protocol is "tcp" (default) or "udp" (SCTP is not proxied).
	Protocol string `json:"protocol,omitempty"`
	// HostIP is the address to listen on; empty means every address
	// (IPv4 and IPv6), 0.0.0.0 every IPv4 one.
	HostIP string `json:"hostIP,omitempty"`
	// HostPort is the port to listen on; 0 picks a free one (see Addrs).
	HostPort int `json:"hostPort"`
	// ContainerPort is the guest's port.
	ContainerPort int `json:"containerPort"`
}

func (m Mapping) String() string {
	return fmt.Sprintf("%s %s -> %d", m.proto(), net.JoinHostPort(m.HostIP, strconv.Itoa(m.HostPort)), m.ContainerPort)
}

func (m Mapping) proto() string {
	if m.Protocol == "" {
		return "tcp"
	}
	return strings.ToLower(m.Protocol)
}

// DefaultUDPIdleTimeout ends a UDP client's relay after this long without
// a datagram in either direction.
const DefaultUDPIdleTimeout = 60 * time.Second

// Manager owns every sandbox's proxies. The zero value is not usable; use
// New. Methods are safe for concurrent use.
type Manager struct {
	// UDPIdleTimeout: see DefaultUDPIdleTimeout. Set before Start.
	UDPIdleTimeout time.Duration
	// DialTimeout bounds a TCP connection to the guest.
	DialTimeout time.Duration
	// Logf, when set, gets one line per failed guest connection.
	Logf func(format string, args ...any)

	mu     sync.Mutex
	groups map[string]*group
}

// New returns an empty Manager.
func New() *Manager {
	return &Manager{
		UDPIdleTimeout: DefaultUDPIdleTimeout,
		DialTimeout:    10 * time.Second,
		groups:         map[string]*group{},
	}
}

// group is one sandbox's proxies.
type group struct {
	m       *Manager
	guest   net.IP
	ctx     context.Context
	cancel  context.CancelFunc
	wg      sync.WaitGroup
	mu      sync.Mutex
	closers map[io.Closer]struct{}
	addrs   []net.Addr
}

func (g *group) track(c io.Closer) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.ctx.Err() != nil {
		return false
	}
	g.closers[c] = struct{}{}
	return true
}

func (g *group) untrack(c io.Closer) {
	g.mu.Lock()
	delete(g.closers, c)
	g.mu.Unlock()
}

func (g *group) close() {
	g.cancel()
	g.mu.Lock()
	for c := range g.closers {
		c.Close()
	}
	g.mu.Unlock()
	g.wg.Wait()
}

func (m *Manager) logf(format string, args ...any) {
	if m.Logf != nil {
		m.Logf(format, args...)
	}
}

// Start listens on every mapping's host port and forwards to guestIP's
// container port. It is all or nothing: when a port cannot be bound (in
// use, bad address) nothing stays bound and the error names the mapping.
// Starting a sandbox that has proxies replaces them.
func (m *Manager) Start(sandboxID string, guestIP net.IP, mappings []Mapping) error {
	if guestIP == nil {
		return errors.New("portproxy: no guest IP")
	}
	m.Stop(sandboxID)

	ctx, cancel := context.WithCancel(context.Background())
	g := &group{m: m, guest: guestIP, ctx: ctx, cancel: cancel, closers: map[io.Closer]struct{}{}}
	for _, mp := range mappings {
		if err := g.listen(mp); err != nil {
			g.close()
			return fmt.Errorf("portproxy: %s: %w", mp, err)
		}
	}
	m.mu.Lock()
	m.groups[sandboxID] = g
	m.mu.Unlock()
	return nil
}

// Stop closes a sandbox's listeners and every connection through them, and
// waits for its goroutines. Stopping an unknown sandbox does nothing.
func (m *Manager) Stop(sandboxID string) {
	m.mu.Lock()
	g := m.groups[sandboxID]
	delete(m.groups, sandboxID)
	m.mu.Unlock()
	if g != nil {
		g.close()
	}
}

// Close stops every sandbox's proxies.
func (m *Manager) Close() {
	m.mu.Lock()
	ids := make([]string, 0, len(m.groups))
	for id := range m.groups {
		ids = append(ids, id)
	}
	m.mu.Unlock()
	for _, id := range ids {
		m.Stop(id)
	}
}

// Addrs are the addresses a sandbox's proxies listen on, in mapping order.
func (m *Manager) Addrs(sandboxID string) []net.Addr {
	m.mu.Lock()
	defer m.mu.Unlock()
	if g := m.groups[sandboxID]; g != nil {
		return append([]net.Addr(nil), g.addrs...)
	}
	return nil
}

// Sandboxes lists the sandboxes with running proxies.
func (m *Manager) Sandboxes() []string {
	m.mu.Lock()
	defer m.mu.Unlock()
	ids := make([]string, 0, len(m.groups))
	for id := range m.groups {
		ids = append(ids, id)
	}
	return ids
}

func listenNetwork(proto, hostIP string) (string, error) {
	if hostIP == "" {
		return proto, nil
	}
	ip := net.ParseIP(hostIP)
	if ip == nil {
		return "", fmt.Errorf("hostIP %q is not an IP address", hostIP)
	}
	if ip.To4() != nil {
		return proto + "4", nil
	}
	return proto + "6", nil
}

func (g *group) listen(mp Mapping) error {
	if mp.HostPort < 0 || mp.HostPort > 65535 || mp.ContainerPort < 1 || mp.ContainerPort > 65535 {
		return errors.New("port out of range")
	}
	network, err := listenNetwork(mp.proto(), mp.HostIP)
	if err != nil {
		return err
	}
	addr := net.JoinHostPort(mp.HostIP, strconv.Itoa(mp.HostPort))
	target := net.JoinHostPort(g.guest.String(), strconv.Itoa(mp.ContainerPort))
	switch mp.proto() {
	case "tcp":
		l, err := net.Listen(network, addr)
		if err != nil {
			return err
		}
		g.track(l)
		g.addrs = append(g.addrs, l.Addr())
		g.wg.Add(1)
		go g.serveTCP(l, target)
	case "udp":
		pc, err := net.ListenPacket(network, addr)
		if err != nil {
			return err
		}
		g.track(pc)
		g.addrs = append(g.addrs, pc.LocalAddr())
		g.wg.Add(1)
		go g.serveUDP(pc, target)
	default:
		return fmt.Errorf("protocol %q is not proxied (tcp or udp)", mp.Protocol)
	}
	return nil
}

func (g *group) serveTCP(l net.Listener, target string) {
	defer g.wg.Done()
	defer l.Close()
	for {
		c, err := l.Accept()
		if err != nil {
			if g.ctx.Err() != nil {
				return
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			if errors.Is(err, net.ErrClosed) {
				return
			}
			time.Sleep(50 * time.Millisecond) // EMFILE and friends
			continue
		}
		g.wg.Add(1)
		go g.spliceTCP(c, target)
	}
}

func (g *group) spliceTCP(client net.Conn, target string) {
	defer g.wg.Done()
	if !g.track(client) {
		client.Close()
		return
	}
	defer g.untrack(client)
	defer client.Close()

	d := net.Dialer{Timeout: g.m.DialTimeout}
	guest, err := d.DialContext(g.ctx, "tcp", target)
	if err != nil {
		g.m.logf("portproxy: %s -> %s: %v", client.LocalAddr(), target, err)
		return
	}
	if !g.track(guest) {
		guest.Close()
		return
	}
	defer g.untrack(guest)
	defer guest.Close()

	relay.Both(guest, client)
}

// udpSession relays one client's datagrams.
type udpSession struct {
	conn *net.UDPConn
	last time.Time // guarded by the session map's lock
}

func (g *group) serveUDP(pc net.PacketConn, target string) {
	defer g.wg.Done()
	defer pc.Close()
	raddr, err := net.ResolveUDPAddr("udp", target)
	if err != nil {
		return
	}
	var mu sync.Mutex
	sessions := map[string]*udpSession{}
	buf := make([]byte, 64*1024)
	for {
		n, from, err := pc.ReadFrom(buf)
		if err != nil {
			if g.ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return
			}
			continue
		}
		key := from.String()
		mu.Lock()
		s := sessions[key]
		if s == nil {
			conn, err := net.DialUDP("udp", nil, raddr)
			if err != nil {
				mu.Unlock()
				g.m.logf("portproxy: udp %s -> %s: %v", from, target, err)
				continue
			}
			if !g.track(conn) {
				mu.Unlock()
				conn.Close()
				return
			}
			s = &udpSession{conn: conn}
			sessions[key] = s
			g.wg.Add(1)
			go g.udpReplies(pc, from, s, &mu, func() {
				delete(sessions, key)
			})
		}
		s.last = time.Now()
		mu.Unlock()
		_, _ = s.conn.Write(buf[:n])
	}
}

// udpReplies sends the guest's answers back to the client until the
// session idles out or the group stops.
func (g *group) udpReplies(pc net.PacketConn, client net.Addr, s *udpSession, mu *sync.Mutex, remove func()) {
	defer g.wg.Done()
	defer g.untrack(s.conn)
	defer s.conn.Close()
	idle := g.m.UDPIdleTimeout
	if idle <= 0 {
		idle = DefaultUDPIdleTimeout
	}
	buf := make([]byte, 64*1024)
	for {
		mu.Lock()
		deadline := s.last.Add(idle)
		mu.Unlock()
		_ = s.conn.SetReadDeadline(deadline)
		n, err := s.conn.Read(buf)
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() && g.ctx.Err() == nil {
				mu.Lock()
				expired := time.Since(s.last) >= idle
				if expired {
					remove()
				}
				mu.Unlock()
				if expired {
					return
				}
				continue
			}
			if g.ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				mu.Lock()
				remove()
				mu.Unlock()
				return
			}
			continue // e.g. ECONNREFUSED from an ICMP unreachable: keep the session
		}
		mu.Lock()
		s.last = time.Now()
		mu.Unlock()
		_, _ = pc.WriteTo(buf[:n], client)
	}
}

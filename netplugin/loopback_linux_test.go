//go:build linux

package netplugin_test

import (
	"context"
	"net"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/macvz/macvz/integration/nettest"
	"github.com/macvz/macvz/netplugin"
)

// aimAtHostLoopback makes a stand-in guest send what it addresses to
// 127.0.0.1 to the bridge (its gateway) instead of its own loopback, the
// way a hostile guest can: its local 127 routes go, a route to 127.0.0.1
// via the gateway comes, route_localnet on its eth0 lets it take answers
// from 127.0.0.1 and accept_local lets it take them although lo still has
// that address.
func aimAtHostLoopback(t *testing.T, g *nettest.NetNS, gw string) {
	t.Helper()
	g.Exec(t, "sysctl", "-q", "-w", "net.ipv4.conf.eth0.route_localnet=1", "net.ipv4.conf.eth0.accept_local=1")
	g.IP(t, "route", "del", "local", "127.0.0.1", "dev", "lo", "table", "local")
	g.IP(t, "route", "del", "local", "127.0.0.0/8", "dev", "lo", "table", "local")
	g.IP(t, "route", "add", "127.0.0.1/32", "via", gw, "dev", "eth0")
}

// countAccepts serves l and counts the connections it accepts.
func countAccepts(l net.Listener) *atomic.Int32 {
	var n atomic.Int32
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			n.Add(1)
			c.Close()
		}
	}()
	return &n
}

// TestLoopbackGuard: the bridge needs route_localnet for hostPorts on
// 127.0.0.1, and the plugin's input chain keeps what is on the bridge from
// reaching the host's loopback-only services through it (CVE-2020-8558),
// while those hostPorts keep working.
func TestLoopbackGuard(t *testing.T) {
	e := newEnv(t, "10.88.0.0/16")
	a := sandboxID(1)
	ports := []netplugin.PortMapping{
		{HostPort: 12000, ContainerPort: 80, Protocol: "tcp", HostIP: "127.0.0.1"},
		{HostPort: 12002, ContainerPort: 80, Protocol: "tcp"},
	}
	res := e.add(a, ports...)
	gw := res.IPs[0].Gateway.String()

	rules := e.ns.Exec(t, "nft", "list", "table", "inet", netplugin.TableName)
	for _, want := range []string{
		"chain input {\n\t\ttype filter hook input priority filter; policy accept;",
		`iifname != "lo" ip daddr 127.0.0.0/8 ct status dnat accept comment "macvz base"`,
		`iifname != "lo" ip daddr 127.0.0.0/8 drop comment "macvz base"`,
	} {
		if !strings.Contains(rules, want) {
			t.Errorf("no %q in:\n%s", want, rules)
		}
	}
	if v := strings.TrimSpace(e.ns.Exec(t, "sysctl", "-n", "net.ipv4.conf.macvz0.route_localnet")); v != "1" {
		t.Errorf("route_localnet on the bridge = %q, want 1 (loopback hostPorts need it)", v)
	}

	guest := fakeGuest(t, e, res, "vguest")
	web, err := guest.Listen("tcp4", ":80")
	if err != nil {
		t.Fatal(err)
	}
	defer web.Close()
	go nettest.Serve(web)
	// A service of the host bound to its loopback only.
	secret, err := e.ns.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer secret.Close()
	accepted := countAccepts(secret)
	secretPort := secret.Addr().(*net.TCPAddr).Port

	// hostPorts answer from the host's loopback: the answers come back
	// in on the bridge, for 127.0.0.1, on a DNAT'ed connection.
	for _, addr := range []string{"127.0.0.1:12000", "127.0.0.1:12002"} {
		if got, err := nettest.Hello(e.ns, "tcp4", addr); err != nil || !strings.HasPrefix(got, "hello "+gw+":") {
			t.Errorf("hostPort %s from the host's loopback: %q, %v", addr, got, err)
		}
	}

	aimAtHostLoopback(t, guest, gw)
	// The guest's packets for 127.0.0.1 do arrive at the host: the
	// hostPort on 127.0.0.1 DNATs them to a pod (itself, by hairpin), as
	// it would a connection to the bridge's address.
	if got, err := nettest.Hello(guest, "tcp4", "127.0.0.1:12000"); err != nil || !strings.HasPrefix(got, "hello "+gw+":") {
		t.Errorf("the guest to 127.0.0.1:12000 through the bridge: %q, %v (is the crafted route wrong?)", got, err)
	}
	// But nothing reaches the host's own loopback service.
	deadline := time.Now().Add(3 * time.Second)
	for time.Now().Before(deadline) && accepted.Load() == 0 {
		c, err := dialFrom(guest, net.JoinHostPort("127.0.0.1", strconv.Itoa(secretPort)), 500*time.Millisecond)
		if err == nil {
			c.Close()
			t.Errorf("the guest connected to the host's 127.0.0.1:%d", secretPort)
			break
		}
	}
	if n := accepted.Load(); n != 0 {
		t.Errorf("the host's loopback-only listener accepted %d connections from the guest", n)
	}

	// A second ADD leaves one guard; CHECK wants it there.
	b := sandboxID(2)
	e.add(b)
	if rules := e.ns.Exec(t, "nft", "list", "chain", "inet", netplugin.TableName, "input"); strings.Count(rules, "127.0.0.0/8") != 2 {
		t.Errorf("input chain after a second ADD:\n%s", rules)
	}
	ctx := context.Background()
	if err := e.cni.CheckNetworkList(ctx, e.list, e.rt(a, ports...)); err != nil {
		t.Errorf("CHECK: %v", err)
	}
	e.ns.Exec(t, "nft", "flush", "chain", "inet", netplugin.TableName, "input")
	if err := e.cni.CheckNetworkList(ctx, e.list, e.rt(a, ports...)); err == nil || !strings.Contains(err.Error(), "127.0.0.0/8") {
		t.Errorf("CHECK without the guard: %v", err)
	}
	// The next ADD puts it back.
	e.del(b)
	e.add(b)
	if rules := e.ns.Exec(t, "nft", "list", "chain", "inet", netplugin.TableName, "input"); strings.Count(rules, "127.0.0.0/8") != 2 {
		t.Errorf("input chain after an ADD on a table without the guard:\n%s", rules)
	}
	// It is shared: it stays when the network's pods are gone, as
	// route_localnet does.
	e.del(a, ports...)
	e.del(b)
	if rules := e.ns.Exec(t, "nft", "list", "chain", "inet", netplugin.TableName, "input"); strings.Count(rules, "127.0.0.0/8") != 2 {
		t.Errorf("input chain after the last DEL:\n%s", rules)
	}
}

func dialFrom(n *nettest.NetNS, addr string, timeout time.Duration) (c net.Conn, err error) {
	derr := n.Do(func() error {
		c, err = net.DialTimeout("tcp4", addr, timeout)
		return nil
	})
	if derr != nil {
		return nil, derr
	}
	return c, err
}

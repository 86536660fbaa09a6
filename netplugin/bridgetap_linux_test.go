//go:build linux

package netplugin_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"unsafe"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/macvz/macvz/integration/nettest"
	"github.com/macvz/macvz/netplugin"
	"golang.org/x/sys/unix"
)

// env is one test's network: a namespace of its own where macvz-net (run
// through libcni, as the daemon does) makes its bridge, taps and rules.
type env struct {
	t        *testing.T
	ns       *nettest.NetNS
	bin      string
	ipamDir  string
	cacheDir string
	cni      *libcni.CNIConfig
	list     *libcni.NetworkConfigList
}

const netName = "macvz"

func conflist(ipamDir, subnet, bridge string) string {
	return fmt.Sprintf(`{"cniVersion":"1.1.0","name":%q,"plugins":[{"type":"macvz-net","mode":"bridge-tap","bridge":%q,"mtu":1500,
		"ipam":{"type":"host-local","ranges":[[{"subnet":%q}]],"routes":[{"dst":"0.0.0.0/0"}],"dataDir":%q},
		"dns":{"nameservers":["10.88.0.1"],"search":["svc.local"]},
		"capabilities":{"portMappings":true,"dns":true,"mac":true}}]}`, netName, bridge, subnet, ipamDir)
}

func newEnv(t *testing.T, subnet string) *env {
	nettest.Require(t)
	e := &env{t: t, ns: nettest.NewNetNS(t, "net"), ipamDir: t.TempDir(), cacheDir: t.TempDir()}
	e.bin = nettest.PluginDir(t, e.ns, binDir, "macvz-net", "portmap")
	e.cni = libcni.NewCNIConfigWithCacheDir([]string{e.bin}, e.cacheDir, nil)
	e.setList(conflist(e.ipamDir, subnet, "macvz0"))
	return e
}

func (e *env) setList(s string) {
	list, err := libcni.NetworkConfFromBytes([]byte(s))
	if err != nil {
		e.t.Fatal(err)
	}
	e.list = list
}

func sandboxID(n int) string { return fmt.Sprintf("%064x", n+0xabc0) }

func (e *env) rt(id string, ports ...netplugin.PortMapping) *libcni.RuntimeConf {
	rt := &libcni.RuntimeConf{ContainerID: id, NetNS: "/var/lib/macvz/sandboxes/" + id, IfName: "eth0", CapabilityArgs: map[string]any{}}
	if len(ports) > 0 {
		rt.CapabilityArgs["portMappings"] = ports
	}
	return rt
}

func (e *env) add(id string, ports ...netplugin.PortMapping) *current.Result {
	e.t.Helper()
	r, err := e.cni.AddNetworkList(context.Background(), e.list, e.rt(id, ports...))
	if err != nil {
		e.t.Fatalf("ADD %s: %v", id[:8], err)
	}
	res, err := current.NewResultFromResult(r)
	if err != nil {
		e.t.Fatal(err)
	}
	return res
}

func (e *env) del(id string, ports ...netplugin.PortMapping) {
	e.t.Helper()
	if err := e.cni.DelNetworkList(context.Background(), e.list, e.rt(id, ports...)); err != nil {
		e.t.Fatalf("DEL %s: %v", id[:8], err)
	}
}

func (e *env) tap(id string) string { return netplugin.TapName(netName, id, "eth0") }
func (e *env) tag(id string) string { return netplugin.Tag(netName, "eth0", id) }

func (e *env) hasLink(name string) bool {
	return strings.Contains(e.ns.IP(e.t, "-o", "link", "show"), ": "+name+":")
}

func (e *env) reserved(ip string) bool {
	_, err := os.Stat(filepath.Join(e.ipamDir, netName, ip))
	return err == nil
}

func (e *env) ruleCount(id string) int {
	out := e.ns.Ruleset(e.t)
	return strings.Count(out, `comment "`+e.tag(id)+`"`)
}

func (e *env) expectGone(id, ip string) {
	e.t.Helper()
	if e.hasLink(e.tap(id)) {
		e.t.Errorf("tap %s of %s still there", e.tap(id), id[:8])
	}
	if ip != "" && e.reserved(ip) {
		e.t.Errorf("IPAM reservation %s of %s still there", ip, id[:8])
	}
	if n := e.ruleCount(id); n != 0 || (ip != "" && strings.Contains(e.ns.Ruleset(e.t), ip+" ")) {
		e.t.Errorf("%d rules of %s (%s) still there:\n%s", n, id[:8], ip, e.ns.Ruleset(e.t))
	}
}

// podIP checks the result's shape and returns the guest's IP.
func checkResult(t *testing.T, res *current.Result, id string) string {
	t.Helper()
	if len(res.Interfaces) != 3 {
		t.Fatalf("interfaces: %v", res.Interfaces)
	}
	br, tap, guest := res.Interfaces[0], res.Interfaces[1], res.Interfaces[2]
	if br.Name != "macvz0" || br.Sandbox != "" || tap.Name != netplugin.TapName(netName, id, "eth0") || tap.Sandbox != "" {
		t.Fatalf("host interfaces: %+v %+v", br, tap)
	}
	if guest.Name != "eth0" || guest.Mac != netplugin.GuestMAC(netName, id, "eth0") || guest.Sandbox != "/var/lib/macvz/sandboxes/"+id || guest.Mtu != 1500 {
		t.Fatalf("guest interface: %+v", guest)
	}
	if len(res.IPs) != 1 || *res.IPs[0].Interface != 2 || res.IPs[0].Gateway.String() != "10.88.0.1" {
		t.Fatalf("ips: %+v", res.IPs)
	}
	_, subnet, _ := net.ParseCIDR("10.88.0.0/16")
	if a := res.IPs[0].Address; !subnet.Contains(a.IP) || a.Mask.String() != subnet.Mask.String() {
		t.Fatalf("address %s not in %s", a.String(), subnet)
	}
	if len(res.Routes) != 1 || res.Routes[0].Dst.String() != "0.0.0.0/0" {
		t.Fatalf("routes: %+v", res.Routes)
	}
	if len(res.DNS.Nameservers) != 1 || res.DNS.Nameservers[0] != "10.88.0.1" || res.DNS.Search[0] != "svc.local" {
		t.Fatalf("dns: %+v", res.DNS)
	}
	return res.IPs[0].Address.IP.String()
}

// openTapLikeQEMU attaches to a persistent tap the way QEMU's
// -netdev tap,ifname= does (TUNSETIFF with IFF_TAP|IFF_NO_PI|IFF_VNET_HDR).
func openTapLikeQEMU(n *nettest.NetNS, name string) error {
	return n.Do(func() error {
		fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC, 0)
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		var req [unix.IFNAMSIZ + 64]byte
		copy(req[:], name)
		*(*uint16)(unsafe.Pointer(&req[unix.IFNAMSIZ])) = unix.IFF_TAP | unix.IFF_NO_PI | unix.IFF_VNET_HDR
		if _, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), unix.TUNSETIFF, uintptr(unsafe.Pointer(&req[0]))); errno != 0 {
			return fmt.Errorf("TUNSETIFF %s: %w", name, errno)
		}
		return nil
	})
}

// fakeGuest stands in for a VM: a namespace whose eth0 (a veth, the other
// end on the bridge in place of the tap, with hairpin like the tap) has the
// pod's IP and MAC and a default route to the gateway.
func fakeGuest(t *testing.T, e *env, res *current.Result, port string) *nettest.NetNS {
	g := nettest.NewNetNS(t, "guest")
	e.ns.IP(t, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", g.Name)
	e.ns.IP(t, "link", "set", port, "master", "macvz0")
	e.ns.IP(t, "link", "set", port, "type", "bridge_slave", "hairpin", "on")
	e.ns.IP(t, "link", "set", port, "up")
	ipc := res.IPs[0]
	g.IP(t, "link", "set", "eth0", "address", res.Interfaces[2].Mac)
	g.IP(t, "addr", "add", ipc.Address.String(), "dev", "eth0")
	g.IP(t, "link", "set", "eth0", "up")
	g.IP(t, "route", "add", "default", "via", ipc.Gateway.String())
	return g
}

func TestBridgeTap(t *testing.T) {
	e := newEnv(t, "10.88.0.0/16")
	a, b := sandboxID(1), sandboxID(2)
	ports := []netplugin.PortMapping{
		{HostPort: 12000, ContainerPort: 80, Protocol: "tcp"},
		{HostPort: 12001, ContainerPort: 5353, Protocol: "udp"},
	}
	resA := e.add(a, ports...)
	resB := e.add(b)
	ipA, ipB := checkResult(t, resA, a), checkResult(t, resB, b)
	if ipA == ipB {
		t.Fatalf("both sandboxes got %s", ipA)
	}

	// Taps: persistent, on the bridge, tagged; the bridge has the gateway.
	for _, id := range []string{a, b} {
		out := e.ns.IP(t, "-d", "link", "show", e.tap(id))
		if !nettest.Contains(out, "master macvz0", "tun type tap", "persist on", "hairpin on", "alias "+e.tag(id)) {
			t.Errorf("tap %s:\n%s", e.tap(id), out)
		}
	}
	if out := e.ns.IP(t, "addr", "show", "macvz0"); !strings.Contains(out, "inet 10.88.0.1/16") {
		t.Errorf("bridge address:\n%s", out)
	}
	if !e.reserved(ipA) || !e.reserved(ipB) {
		t.Errorf("IPAM store lacks %s or %s", ipA, ipB)
	}
	// A: outbound NAT, loopback and hairpin masquerade, two DNATs; B: NAT.
	if na, nb := e.ruleCount(a), e.ruleCount(b); na != 5 || nb != 1 {
		t.Errorf("rules: A %d (want 5), B %d (want 1):\n%s", na, nb, e.ns.Ruleset(t))
	}
	rules := e.ns.Exec(t, "nft", "list", "table", "inet", netplugin.TableName)
	for _, want := range []string{"tcp dport 12000 dnat ip to " + ipA + ":80", "udp dport 12001 dnat ip to " + ipA + ":5353",
		"ip saddr " + ipA + " ip daddr != 10.88.0.0/16 masquerade", "ip saddr 127.0.0.0/8 ip daddr " + ipA + " ct status dnat masquerade"} {
		if !strings.Contains(rules, want) {
			t.Errorf("no %q in:\n%s", want, rules)
		}
	}
	if v := strings.TrimSpace(e.ns.Exec(t, "sysctl", "-n", "net.ipv4.conf.macvz0.route_localnet", "net.ipv4.ip_forward")); v != "1\n1" {
		t.Errorf("route_localnet, ip_forward = %q", v)
	}

	// QEMU can open the tap later, and it outlives that.
	if err := openTapLikeQEMU(e.ns, e.tap(a)); err != nil {
		t.Fatal(err)
	}
	if !e.hasLink(e.tap(a)) {
		t.Fatal("tap gone after QEMU-style close")
	}

	// Traffic, through a stand-in guest for A and an outside network.
	guest := fakeGuest(t, e, resA, "vguest")
	outside := nettest.NewNetNS(t, "out")
	e.ns.IP(t, "link", "add", "uplink", "type", "veth", "peer", "name", "eth0", "netns", outside.Name)
	e.ns.IP(t, "addr", "add", "172.31.0.1/24", "dev", "uplink")
	e.ns.IP(t, "link", "set", "uplink", "up")
	outside.IP(t, "addr", "add", "172.31.0.2/24", "dev", "eth0")
	outside.IP(t, "link", "set", "eth0", "up")
	for _, srv := range []struct {
		n    *nettest.NetNS
		addr string
	}{{guest, ":80"}, {outside, ":8080"}} {
		l, err := srv.n.Listen("tcp4", srv.addr)
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		go nettest.Serve(l)
	}
	pc, err := guest.ListenPacket("udp4", ":5353")
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	go nettest.ServeUDP(pc)

	for _, c := range []struct {
		what, from  string
		n           *nettest.NetNS
		proto, addr string
		wantFrom    string
	}{
		{"hostPort from the host's loopback", "host", e.ns, "tcp4", "127.0.0.1:12000", "10.88.0.1:"},
		{"hostPort on the host's own address", "host", e.ns, "tcp4", "172.31.0.1:12000", "172.31.0.1:"},
		{"hostPort on the bridge address", "host", e.ns, "tcp4", "10.88.0.1:12000", "10.88.0.1:"},
		{"udp hostPort from loopback", "host", e.ns, "udp4", "127.0.0.1:12001", "10.88.0.1:"},
		{"the pod IP from the host", "host", e.ns, "tcp4", ipA + ":80", "10.88.0.1:"},
		{"hostPort from another machine", "outside", outside, "tcp4", "172.31.0.1:12000", "172.31.0.2:"},
		{"the guest going out (masquerade)", "guest", guest, "tcp4", "172.31.0.2:8080", "172.31.0.1:"},
		{"the guest's own hostPort (hairpin)", "guest", guest, "tcp4", "10.88.0.1:12000", "10.88.0.1:"},
	} {
		got, err := nettest.Hello(c.n, c.proto, c.addr)
		if err != nil || !strings.HasPrefix(got, "hello "+c.wantFrom) {
			t.Errorf("%s (%s -> %s): %q, %v; want hello %s...", c.what, c.from, c.addr, got, err, c.wantFrom)
		}
	}

	// CHECK passes for both, then fails once B's tap is gone.
	ctx := context.Background()
	if err := e.cni.CheckNetworkList(ctx, e.list, e.rt(a, ports...)); err != nil {
		t.Errorf("CHECK A: %v", err)
	}
	if err := e.cni.CheckNetworkList(ctx, e.list, e.rt(b)); err != nil {
		t.Errorf("CHECK B: %v", err)
	}
	e.ns.IP(t, "link", "del", e.tap(b))
	if err := e.cni.CheckNetworkList(ctx, e.list, e.rt(b)); err == nil || !strings.Contains(err.Error(), e.tap(b)) {
		t.Errorf("CHECK B without its tap: %v", err)
	}

	// DEL removes tap, reservation and rules, and may repeat.
	e.del(b)
	e.expectGone(b, ipB)
	e.del(a, ports...)
	e.expectGone(a, ipA)
	e.del(a, ports...)
	if got, err := nettest.Hello(e.ns, "tcp4", "127.0.0.1:12000"); err == nil {
		t.Errorf("hostPort still answers after DEL: %q", got)
	}
	// What stays is shared: the bridge and the table's base chains.
	if !e.hasLink("macvz0") || !strings.Contains(e.ns.Ruleset(t), `comment "macvz base"`) {
		t.Errorf("shared state:\n%s", e.ns.Ruleset(t))
	}
}

func TestGC(t *testing.T) {
	e := newEnv(t, "10.88.0.0/16")
	ctx := context.Background()
	ids := []string{sandboxID(1), sandboxID(2), sandboxID(3)}
	ips := map[string]string{}
	for i, id := range ids {
		var ports []netplugin.PortMapping
		if i == 1 {
			ports = []netplugin.PortMapping{{HostPort: 13000, ContainerPort: 80}}
		}
		ips[id] = checkResult(t, e.add(id, ports...), id)
	}
	// A crash before libcni cached sandbox 2's result: only the plugin's
	// own GC can find its tap, reservation and rules.
	if err := os.Remove(filepath.Join(e.cacheDir, "results", netName+"-"+ids[1]+"-eth0")); err != nil {
		t.Fatal(err)
	}
	// An untagged tap on our bridge (a crash between creating and
	// tagging it) goes too; another network's tap stays.
	e.ns.IP(t, "tuntap", "add", "mvzdeadbeef000", "mode", "tap")
	e.ns.IP(t, "link", "set", "mvzdeadbeef000", "master", "macvz0")
	e.ns.IP(t, "tuntap", "add", "mvzotherxxxxxx", "mode", "tap")
	e.ns.IP(t, "link", "set", "mvzotherxxxxxx", "alias", netplugin.Tag("another-network", "eth0", "x"))

	if err := e.cni.GCNetworkList(ctx, e.list, &libcni.GCArgs{ValidAttachments: []types.GCAttachment{{ContainerID: ids[0], IfName: "eth0"}}}); err != nil {
		t.Fatal(err)
	}
	e.expectGone(ids[1], ips[ids[1]])
	e.expectGone(ids[2], ips[ids[2]])
	if e.hasLink("mvzdeadbeef000") || !e.hasLink("mvzotherxxxxxx") {
		t.Errorf("untagged/foreign taps:\n%s", e.ns.Links(t))
	}
	if !e.hasLink(e.tap(ids[0])) || !e.reserved(ips[ids[0]]) || e.ruleCount(ids[0]) != 1 {
		t.Fatalf("GC removed a valid attachment:\n%s\n%s", e.ns.Links(t), e.ns.Ruleset(t))
	}
	if err := e.cni.CheckNetworkList(ctx, e.list, e.rt(ids[0])); err != nil {
		t.Errorf("CHECK after GC: %v", err)
	}

	// An empty list collects everything.
	if err := e.cni.GCNetworkList(ctx, e.list, &libcni.GCArgs{ValidAttachments: []types.GCAttachment{}}); err != nil {
		t.Fatal(err)
	}
	e.expectGone(ids[0], ips[ids[0]])
	if links := e.ns.IP(t, "-o", "link", "show", "type", "tun"); strings.Count(links, ": mvz") != 1 {
		t.Errorf("taps left:\n%s", links)
	}
	entries, _ := os.ReadDir(filepath.Join(e.ipamDir, netName))
	for _, en := range entries {
		if net.ParseIP(en.Name()) != nil {
			t.Errorf("reservation %s left", en.Name())
		}
	}
	if strings.Contains(e.ns.Ruleset(t), `comment "macvz `+strings.Split(e.tag(ids[0]), " ")[1]) {
		t.Errorf("rules left:\n%s", e.ns.Ruleset(t))
	}
}

func TestAddFailureLeavesNothing(t *testing.T) {
	// A /30 has one address for pods: the second ADD fails in IPAM, after
	// the plugin made its tap.
	e := newEnv(t, "10.99.0.0/30")
	first, second := sandboxID(1), sandboxID(2)
	e.add(first)
	_, err := e.cni.AddNetworkList(context.Background(), e.list, e.rt(second, netplugin.PortMapping{HostPort: 14000, ContainerPort: 80}))
	if err == nil {
		t.Fatal("second ADD in a full /30 succeeded")
	}
	var te *types.Error
	if !errors.As(err, &te) || !strings.Contains(te.Msg, "no IP addresses available") {
		t.Logf("error: %v", err)
	}
	e.expectGone(second, "")
	if !e.hasLink(e.tap(first)) {
		t.Fatal("the failed ADD removed another sandbox's tap")
	}
}

func TestStatus(t *testing.T) {
	e := newEnv(t, "10.88.0.0/16")
	ctx := context.Background()
	if err := e.cni.GetStatusNetworkList(ctx, e.list); err != nil {
		t.Fatalf("STATUS: %v", err)
	}
	if e.hasLink("macvz0") {
		t.Error("STATUS made the bridge")
	}

	// The bridge name taken by another kind of device.
	e.ns.IP(t, "link", "add", "notabr", "type", "veth", "peer", "name", "notabr-peer")
	e.setList(conflist(e.ipamDir, "10.88.0.0/16", "notabr"))
	err := e.cni.GetStatusNetworkList(ctx, e.list)
	var te *types.Error
	if !errors.As(err, &te) || te.Code != types.ErrPluginNotAvailable || !strings.Contains(te.Msg, "not a bridge") {
		t.Errorf("STATUS with a veth for bridge: %v", err)
	}
	_, err = e.cni.AddNetworkList(ctx, e.list, e.rt(sandboxID(1)))
	if !errors.As(err, &te) || te.Code != types.ErrInvalidNetworkConfig {
		t.Errorf("ADD with a veth for bridge: %v", err)
	}

	// No IPAM plugin installed.
	e.setList(conflist(e.ipamDir, "10.88.0.0/16", "macvz0"))
	if err := os.Remove(filepath.Join(e.bin, "host-local")); err != nil {
		t.Fatal(err)
	}
	err = e.cni.GetStatusNetworkList(ctx, e.list)
	if !errors.As(err, &te) || te.Code != types.ErrPluginNotAvailable || !strings.Contains(te.Msg, "host-local") {
		t.Errorf("STATUS without host-local: %v", err)
	}
}

// Another plugin after macvz-net gets a valid prevResult and passes it on.
func TestChain(t *testing.T) {
	e := newEnv(t, "10.88.0.0/16")
	s := conflist(e.ipamDir, "10.88.0.0/16", "macvz0")
	s = strings.TrimSuffix(s, "]}") + `,{"type":"portmap","backend":"nftables"}]}`
	e.setList(s)
	id := sandboxID(7)
	res := e.add(id)
	ip := checkResult(t, res, id)
	if err := e.cni.CheckNetworkList(context.Background(), e.list, e.rt(id)); err != nil {
		t.Errorf("CHECK: %v", err)
	}
	e.del(id)
	e.expectGone(id, ip)
}

func TestDualStack(t *testing.T) {
	e := newEnv(t, "10.88.0.0/16")
	s := conflist(e.ipamDir, "10.88.0.0/16", "macvz0")
	s = strings.Replace(s, `"ranges":[[{"subnet":"10.88.0.0/16"}]]`, `"ranges":[[{"subnet":"10.88.0.0/16"}],[{"subnet":"fd00:88::/64"}]]`, 1)
	e.setList(s)
	id := sandboxID(3)
	res := e.add(id, netplugin.PortMapping{HostPort: 12000, ContainerPort: 80}, netplugin.PortMapping{HostPort: 12000, ContainerPort: 80, HostIP: "::"})
	if len(res.IPs) != 2 || res.IPs[1].Address.IP.To4() != nil || res.IPs[1].Gateway.String() != "fd00:88::1" {
		t.Fatalf("ips: %+v", res.IPs)
	}
	ip6 := res.IPs[1].Address.IP.String()
	if out := e.ns.IP(t, "addr", "show", "macvz0"); !strings.Contains(out, "inet6 fd00:88::1/64") {
		t.Errorf("bridge:\n%s", out)
	}
	rules := e.ns.Exec(t, "nft", "list", "table", "inet", netplugin.TableName)
	for _, want := range []string{
		"ip6 saddr " + ip6 + " ip6 daddr != fd00:88::/64 masquerade",
		"ip6 saddr fd00:88::/64 ip6 daddr " + ip6 + " ct status dnat masquerade",
		"tcp dport 12000 dnat ip6 to [" + ip6 + "]:80",
		"tcp dport 12000 dnat ip to " + res.IPs[0].Address.IP.String() + ":80",
	} {
		if !strings.Contains(rules, want) {
			t.Errorf("no %q in:\n%s", want, rules)
		}
	}
	// v4: NAT, loopback, hairpin, DNAT (the :: mapping is v6 only); v6:
	// NAT, hairpin, DNAT for both mappings.
	if n := e.ruleCount(id); n != 4+4 {
		t.Errorf("%d rules, want 8:\n%s", n, rules)
	}
	if v := strings.TrimSpace(e.ns.Exec(t, "sysctl", "-n", "net.ipv6.conf.all.forwarding")); v != "1" {
		t.Errorf("ipv6 forwarding %q", v)
	}
	e.del(id)
	e.expectGone(id, ip6)
}

// Traffic to a nonMasqueradeCIDRs range (a cluster's pod CIDR) keeps the
// pod's address; everything else outside the subnet is still masqueraded.
func TestNonMasqueradeCIDRs(t *testing.T) {
	e := newEnv(t, "10.244.1.0/24")
	s := conflist(e.ipamDir, "10.244.1.0/24", "macvz0")
	s = strings.Replace(s, `"type":"macvz-net",`, `"type":"macvz-net","nonMasqueradeCIDRs":["10.244.0.0/16","fd00:244::/48"],`, 1)
	if !strings.Contains(s, "nonMasqueradeCIDRs") {
		t.Fatalf("conflist not patched: %s", s)
	}
	e.setList(s)
	id := sandboxID(9)
	res := e.add(id)
	if len(res.IPs) != 1 {
		t.Fatalf("ips: %+v", res.IPs)
	}
	ip := res.IPs[0].Address.IP.String()
	rules := e.ns.Exec(t, "nft", "list", "table", "inet", netplugin.TableName)
	want := "ip saddr " + ip + " ip daddr != 10.244.1.0/24 ip daddr != 10.244.0.0/16 masquerade"
	if !strings.Contains(rules, want) || strings.Contains(rules, "fd00:244") {
		t.Errorf("no %q (or a v6 range in a v4 rule) in:\n%s", want, rules)
	}
	if err := e.cni.CheckNetworkList(context.Background(), e.list, e.rt(id)); err != nil {
		t.Errorf("CHECK: %v", err)
	}
	e.del(id)
	e.expectGone(id, ip)
}

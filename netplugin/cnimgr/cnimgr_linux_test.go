//go:build linux

package cnimgr_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/macvz/macvz/integration/nettest"
	"github.com/macvz/macvz/netplugin"
	"github.com/macvz/macvz/netplugin/cnimgr"
	"github.com/macvz/macvz/runtime/vm"
)

var binDir string

func TestMain(m *testing.M) { os.Exit(nettest.Main(m, &binDir)) }

func conflist(name, bridge, ipamDir string, extra ...string) string {
	plugins := append([]string{fmt.Sprintf(`{"type":"macvz-net","mode":"bridge-tap","bridge":%q,
		"ipam":{"type":"host-local","ranges":[[{"subnet":"10.88.0.0/16"}]],"routes":[{"dst":"0.0.0.0/0"}],"dataDir":%q},
		"capabilities":{"portMappings":true,"dns":true}}`, bridge, ipamDir)}, extra...)
	return fmt.Sprintf(`{"cniVersion":"1.1.0","name":%q,"plugins":[%s]}`, name, strings.Join(plugins, ","))
}

func writeConf(t *testing.T, dir, file, body string) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(dir, file), []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
}

func wantReason(t *testing.T, err error, reason, msg string) {
	t.Helper()
	var se *cnimgr.StatusError
	if !errors.As(err, &se) || se.Reason != reason || !strings.Contains(se.Error(), msg) {
		t.Errorf("got %v (%T), want %s containing %q", err, err, reason, msg)
	}
}

// Status without a usable configuration needs no root.
func TestStatusReasons(t *testing.T) {
	ctx := context.Background()
	confDir, emptyBin := t.TempDir(), t.TempDir()
	m, err := cnimgr.New(cnimgr.Config{ConfDir: confDir, BinDirs: []string{emptyBin}, CacheDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	wantReason(t, m.Status(ctx), cnimgr.ReasonNoConfig, confDir)

	writeConf(t, confDir, "10-broken.conflist", `{"name":`)
	wantReason(t, m.Status(ctx), cnimgr.ReasonBadConfig, "10-broken.conflist")

	writeConf(t, confDir, "05-bridge.conflist", `{"cniVersion":"1.1.0","name":"b","plugins":[{"type":"bridge"}]}`)
	wantReason(t, m.Status(ctx), cnimgr.ReasonNotMacvzNetwork, `first plugin is "bridge"`)

	writeConf(t, confDir, "01-macvz.conflist", conflist("macvz", "macvz0", t.TempDir()))
	wantReason(t, m.Status(ctx), cnimgr.ReasonPluginMissing, "macvz-net not found in "+emptyBin)

	named, _ := cnimgr.New(cnimgr.Config{ConfDir: confDir, Network: "nope", BinDirs: []string{emptyBin}, CacheDir: t.TempDir()})
	wantReason(t, named.Status(ctx), cnimgr.ReasonBadConfig, `no network config named "nope"`)

	if _, err := cnimgr.New(cnimgr.Config{ConfDir: "relative"}); err == nil {
		t.Error("relative ConfDir accepted")
	}
	def, _ := cnimgr.New(cnimgr.Config{})
	if c := def.Config(); c.ConfDir != "/etc/macvz/net.d" || c.BinDirs[0] != "/opt/macvz/bin" || c.IfName != "eth0" {
		t.Errorf("defaults: %+v", c)
	}

	// hostPorts on a network that cannot map them fail before any ADD.
	os.Remove(filepath.Join(confDir, "10-broken.conflist"))
	os.Remove(filepath.Join(confDir, "05-bridge.conflist"))
	writeConf(t, confDir, "01-macvz.conflist", strings.Replace(conflist("macvz", "macvz0", t.TempDir()), `"portMappings":true,`, "", 1))
	_, err = m.Setup(ctx, strings.Repeat("a", 64), "/tmp/sb", []cnimgr.PortMapping{{HostPort: 8080, ContainerPort: 80}})
	if err == nil || !strings.Contains(err.Error(), "portMappings capability") {
		t.Errorf("Setup with ports on a network without the capability: %v", err)
	}
}

type env struct {
	t        *testing.T
	ns       *nettest.NetNS
	confDir  string
	ipamDir  string
	bin      string
	m        *cnimgr.Manager
	sandboxD string
}

func newEnv(t *testing.T) *env {
	nettest.Require(t)
	e := &env{t: t, ns: nettest.NewNetNS(t, "mgr"), confDir: t.TempDir(), ipamDir: t.TempDir(), sandboxD: t.TempDir()}
	e.bin = nettest.PluginDir(t, e.ns, binDir, "macvz-net", "portmap")
	writeConf(t, e.confDir, "10-macvz.conflist", conflist("macvz", "macvz0", e.ipamDir))
	m, err := cnimgr.New(cnimgr.Config{ConfDir: e.confDir, BinDirs: []string{e.bin}, CacheDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	e.m = m
	return e
}

func id(n int) string { return fmt.Sprintf("%064x", 0x5ab0+n) }

func (e *env) dir(id string) string { return filepath.Join(e.sandboxD, id[:12]) }

func (e *env) setup(id string, ports []cnimgr.PortMapping, opts ...cnimgr.Option) *cnimgr.Attachment {
	e.t.Helper()
	a, err := e.m.Setup(context.Background(), id, e.dir(id), ports, opts...)
	if err != nil {
		e.t.Fatalf("Setup %s: %v", id[:8], err)
	}
	return a
}

func (e *env) gone(network, id string, a *cnimgr.Attachment) {
	e.t.Helper()
	tap := netplugin.TapName(network, id, "eth0")
	if strings.Contains(e.ns.IP(e.t, "-o", "link", "show"), ": "+tap+":") {
		e.t.Errorf("tap %s still there", tap)
	}
	for _, ip := range a.PodIPs() {
		if _, err := os.Stat(filepath.Join(e.ipamDir, network, ip)); err == nil {
			e.t.Errorf("reservation %s still there", ip)
		}
		if strings.Contains(e.ns.Ruleset(e.t), ip+" ") {
			e.t.Errorf("rules for %s still there:\n%s", ip, e.ns.Ruleset(e.t))
		}
	}
}

func TestSetupTeardown(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	if err := e.m.Status(ctx); err != nil {
		t.Fatalf("Status: %v", err)
	}
	s1, s2 := id(1), id(2)
	ports := []cnimgr.PortMapping{{HostPort: 12000, ContainerPort: 80, Protocol: "tcp"}}
	dns := cnimgr.DNS{Servers: []string{"10.96.0.10"}, Searches: []string{"ns.svc.cluster.local"}, Options: []string{"ndots:5"}}
	a := e.setup(s1, ports, cnimgr.WithDNS(dns), cnimgr.WithArgs([2]string{"K8S_POD_NAME", "web"}))

	tap := netplugin.TapName("macvz", s1, "eth0")
	if a.Kind != vm.NICTap || a.Device != tap || a.MAC != netplugin.GuestMAC("macvz", s1, "eth0") || a.Network != "macvz" || a.IfName != "eth0" {
		t.Fatalf("attachment: %+v", a)
	}
	if nic := a.NIC(); nic.Kind != vm.NICTap || nic.Device != tap || nic.MAC != a.MAC || len(nic.Forwards) != 0 {
		t.Fatalf("NIC: %+v", nic)
	}
	if len(a.IPs) != 1 || a.IPs[0].Address.String() != "10.88.0.2/16" || a.IPs[0].Gateway.String() != "10.88.0.1" {
		t.Fatalf("IPs: %+v", a.IPs)
	}
	if len(a.Routes) != 1 || a.Routes[0].Dst.String() != "0.0.0.0/0" || a.Routes[0].GW.String() != "10.88.0.1" {
		t.Fatalf("routes (gateway filled in): %+v", a.Routes)
	}
	if strings.Join(a.DNS.Servers, ",") != "10.96.0.10" || a.DNS.Searches[0] != "ns.svc.cluster.local" || a.DNS.Options[0] != "ndots:5" {
		t.Fatalf("DNS: %+v", a.DNS)
	}
	if !a.PortMappingsHandled || strings.Join(a.PodIPs(), ",") != "10.88.0.2" {
		t.Fatalf("ports handled %v, pod IPs %v", a.PortMappingsHandled, a.PodIPs())
	}
	if !strings.Contains(e.ns.Ruleset(t), "tcp dport 12000 dnat ip to 10.88.0.2:80") {
		t.Fatalf("hostPort rule missing:\n%s", e.ns.Ruleset(t))
	}

	// After a restart: the same attachment from the cache.
	again, err := e.m.Attachment(s1)
	if err != nil {
		t.Fatal(err)
	}
	if again.Device != a.Device || again.MAC != a.MAC || again.IPs[0].Address.String() != a.IPs[0].Address.String() || again.DNS.Servers[0] != "10.96.0.10" {
		t.Fatalf("cached attachment %+v, want %+v", again, a)
	}
	if err := e.m.Check(ctx, s1, e.dir(s1), ports); err != nil {
		t.Fatalf("Check: %v", err)
	}

	b := e.setup(s2, nil)
	if b.PodIPs()[0] == a.PodIPs()[0] {
		t.Fatalf("same IP for two sandboxes: %s", a.PodIPs()[0])
	}

	if err := e.m.Teardown(ctx, s1, e.dir(s1), ports); err != nil {
		t.Fatal(err)
	}
	e.gone("macvz", s1, a)
	if err := e.m.Teardown(ctx, s1, e.dir(s1), ports); err != nil {
		t.Fatalf("second Teardown: %v", err)
	}
	if _, err := e.m.Attachment(s1); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("Attachment after Teardown: %v", err)
	}

	// The configuration changes under a live sandbox: Teardown still
	// undoes it with the configuration it was set up with.
	writeConf(t, e.confDir, "10-macvz.conflist", conflist("other", "macvz1", e.ipamDir))
	if err := e.m.Teardown(ctx, s2, e.dir(s2), nil); err != nil {
		t.Fatal(err)
	}
	e.gone("macvz", s2, b)
}

func TestGC(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	atts := map[string]*cnimgr.Attachment{}
	for i := 1; i <= 3; i++ {
		atts[id(i)] = e.setup(id(i), []cnimgr.PortMapping{{HostPort: int32(13000 + i), ContainerPort: 80}})
	}
	if err := e.m.GC(ctx, []string{id(1)}); err != nil {
		t.Fatal(err)
	}
	e.gone("macvz", id(2), atts[id(2)])
	e.gone("macvz", id(3), atts[id(3)])
	if err := e.m.Check(ctx, id(1), e.dir(id(1)), []cnimgr.PortMapping{{HostPort: 13001, ContainerPort: 80}}); err != nil {
		t.Fatalf("live sandbox after GC: %v", err)
	}

	// A sandbox of an older configuration, the daemon restarted with a
	// new one: GC finds it in the cache.
	writeConf(t, e.confDir, "10-macvz.conflist", conflist("other", "macvz1", e.ipamDir))
	if err := e.m.GC(ctx, nil); err != nil {
		t.Fatal(err)
	}
	e.gone("macvz", id(1), atts[id(1)])

	// No configuration at all: nothing to collect is not an error.
	os.Remove(filepath.Join(e.confDir, "10-macvz.conflist"))
	if err := e.m.GC(ctx, nil); err != nil {
		t.Fatalf("GC without a config: %v", err)
	}
}

func TestSetupFailure(t *testing.T) {
	e := newEnv(t)
	// A chained plugin that refuses ADD (and accepts DEL): Setup fails,
	// says why, and undoes macvz-net's part.
	nettest.WriteScript(t, filepath.Join(e.bin, "refuse"), `cat >/dev/null
case "$CNI_COMMAND" in
ADD) echo '{"cniVersion":"1.1.0","code":11,"msg":"refuse says no"}'; exit 1;;
VERSION) echo '{"cniVersion":"1.1.0","supportedVersions":["0.4.0","1.0.0","1.1.0"]}';;
esac
exit 0
`)
	writeConf(t, e.confDir, "10-macvz.conflist", conflist("macvz", "macvz0", e.ipamDir, `{"type":"refuse"}`))
	s := id(9)
	_, err := e.m.Setup(context.Background(), s, e.dir(s), []cnimgr.PortMapping{{HostPort: 12000, ContainerPort: 80}})
	if err == nil || !strings.Contains(err.Error(), "refuse says no (CNI error 11)") {
		t.Fatalf("Setup: %v", err)
	}
	e.gone("macvz", s, &cnimgr.Attachment{IPs: []cnimgr.IPConfig{}})
	entries, _ := os.ReadDir(filepath.Join(e.ipamDir, "macvz"))
	for _, en := range entries {
		if strings.HasPrefix(en.Name(), "10.") {
			t.Errorf("reservation %s left", en.Name())
		}
	}
	if strings.Contains(e.ns.Ruleset(t), "dport 12000") {
		t.Errorf("rules left:\n%s", e.ns.Ruleset(t))
	}
}

func TestChainedResult(t *testing.T) {
	e := newEnv(t)
	writeConf(t, e.confDir, "10-macvz.conflist", conflist("macvz", "macvz0", e.ipamDir, `{"type":"portmap","backend":"nftables"}`))
	ctx := context.Background()
	if err := e.m.Status(ctx); err != nil {
		t.Fatal(err)
	}
	s := id(4)
	a := e.setup(s, nil)
	if a.Device != netplugin.TapName("macvz", s, "eth0") || len(a.IPs) != 1 {
		t.Fatalf("attachment from the chain's final result: %+v", a)
	}
	if err := e.m.Teardown(ctx, s, e.dir(s), nil); err != nil {
		t.Fatal(err)
	}
	e.gone("macvz", s, a)
}

func TestStatusNotReady(t *testing.T) {
	e := newEnv(t)
	os.Remove(filepath.Join(e.bin, "host-local"))
	wantReason(t, e.m.Status(context.Background()), cnimgr.ReasonPluginNotReady, "(CNI error 50)")
}

func TestConcurrentSetup(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	const n = 6
	atts := make([]*cnimgr.Attachment, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			s := id(100 + i)
			atts[i], errs[i] = e.m.Setup(ctx, s, e.dir(s), []cnimgr.PortMapping{{HostPort: int32(20000 + i), ContainerPort: 80}})
		}(i)
	}
	wg.Wait()
	seen := map[string]bool{}
	for i := 0; i < n; i++ {
		if errs[i] != nil {
			t.Fatalf("Setup %d: %v", i, errs[i])
		}
		ip := atts[i].PodIPs()[0]
		if seen[ip] {
			t.Fatalf("IP %s given twice", ip)
		}
		seen[ip] = true
	}
	if err := e.m.GC(ctx, nil); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < n; i++ {
		e.gone("macvz", id(100+i), atts[i])
	}
}

package netplugin

import (
	"encoding/json"
	"errors"
	"net"
	"strings"
	"testing"

	"github.com/containernetworking/cni/pkg/types"
)

func TestLoadConfDefaults(t *testing.T) {
	c, err := LoadConf([]byte(`{"cniVersion":"1.1.0","name":"n","type":"macvz-net","mode":"bridge-tap"}`))
	if err != nil {
		t.Fatal(err)
	}
	if c.Bridge != DefaultBridge || c.IPAM.Type != "host-local" || !*c.HairpinMode {
		t.Fatalf("defaults: %+v", c)
	}
	if len(c.ipam.Ranges) != 1 || c.ipam.Ranges[0][0].Subnet != DefaultSubnet {
		t.Fatalf("default range: %+v", c.ipam)
	}
	if c.HostLocalDir() != "/var/lib/cni/networks/n" {
		t.Fatalf("store %s", c.HostLocalDir())
	}
	// The IPAM plugin's stdin has the default section, other keys intact.
	var in map[string]any
	if err := json.Unmarshal(c.ipamStdin, &in); err != nil {
		t.Fatal(err)
	}
	ipam := in["ipam"].(map[string]any)
	if in["name"] != "n" || ipam["type"] != "host-local" || ipam["routes"] == nil {
		t.Fatalf("ipam stdin: %s", c.ipamStdin)
	}

	// A host-local section with a subnet keeps it; no mode means the
	// platform's.
	c, err = LoadConf([]byte(`{"name":"n","ipam":{"type":"host-local","subnet":"10.9.0.0/24","dataDir":"/tmp/x"},"mtu":1400,"hairpinMode":false}`))
	if err != nil {
		t.Fatal(err)
	}
	if c.Mode != DefaultMode() || c.ipam.Subnet != "10.9.0.0/24" || c.ipam.Ranges != nil || c.MTU != 1400 || *c.HairpinMode {
		t.Fatalf("%+v", c)
	}
	if c.HostLocalDir() != "/tmp/x/n" {
		t.Fatalf("store %s", c.HostLocalDir())
	}

	// GC's list: present-and-empty is not absent.
	c, err = LoadConf([]byte(`{"name":"n","mode":"bridge-tap","cni.dev/valid-attachments":[]}`))
	if err != nil || !c.hasValid || len(c.valid) != 0 {
		t.Fatalf("%v %+v", err, c)
	}
	c, err = LoadConf([]byte(`{"name":"n","mode":"bridge-tap","cni.dev/valid-attachments":[{"containerID":"a","ifname":"eth0"}]}`))
	if err != nil || !c.hasValid || c.valid[0] != (types.GCAttachment{ContainerID: "a", IfName: "eth0"}) {
		t.Fatalf("%v %+v", err, c)
	}
}

func TestLoadConfErrors(t *testing.T) {
	for _, tc := range []struct{ conf, want string }{
		{`{"name":"n","mode":"slirp"}`, `unknown mode "slirp"`},
		{`{"mode":"bridge-tap"}`, "missing network name"},
		{`{"name":"n","mode":"bridge-tap","bridge":"a-name-that-is-too-long"}`, "bridge"},
		{`{"name":"n","mode":"bridge-tap","mtu":20}`, "mtu 20"},
		{`{"name":"n","mode":"bridge-tap","ipam":{"type":"host-local","ranges":[[{"subnet":"10.88.0.0/33"}]]}}`, `ipam.ranges[0][0].subnet "10.88.0.0/33"`},
		{`{"name":"n","mode":"bridge-tap","ipam":{"type":"host-local","subnet":"nonsense"}}`, `ipam.subnet "nonsense"`},
		{`{"name":"n","mode":"bridge-tap","ipam":{"type":"host-local","ranges":[[{"subnet":"10.0.0.0/8","gateway":"x"}]]}}`, "gateway"},
		{`{"name":"n","mode":"bridge-tap","ipam":{"type":"host-local","ranges":[[]]}}`, "empty range set"},
		{`{"name":"n","mode":"bridge-tap","ipam":{"subnet":"10.0.0.0/8"}}`, `missing "type"`},
		{`{"name":"n","mode":"vmnet-bridged"}`, `needs "interface"`},
		{`{"name":"n","mode":"socket","socket":"relative.sock"}`, "absolute path"},
		{`{"name":"n","mode":"socket","socket":"/var/run/socket_vmnet.bridged.en0","lan":true}`, "needs \"subnet\", the LAN's"},
		{`{"name":"n","mode":"vmnet-nat","lan":true}`, "\"lan\" is for mode socket"},
		{`{"name":"n","mode":"vmnet-nat","ipam":{"type":"host-local"}}`, `takes no "ipam"`},
		{`{"name":"n","mode":"vmnet-nat","subnet":"192.168.64.0/33"}`, `subnet "192.168.64.0/33"`},
		{`{"name":"n","mode":"vmnet-nat","subnet":"fd00::/64"}`, "IPv4"},
		{`{"name":"n","mode":"vmnet-nat","subnet":"192.168.64.0/31"}`, "too small"},
		{`{"name":"n","mode":"vmnet-nat","gateway":"10.0.0.1"}`, `gateway "10.0.0.1"`},
		{`{"name":"n","mode":"vmnet-bridged","interface":"en0","gateway":"10.0.0.1"}`, `needs "subnet"`},
		{`{"name":"n","mode":"bridge-tap","subnet":"10.0.0.0/8"}`, `not "subnet"`},
		{`{"name":"n","mode":"bridge-tap","runtimeConfig":{"portMappings":[{"hostPort":0,"containerPort":80}]}}`, "hostPort 0"},
		{`{"name":"n","mode":"bridge-tap","runtimeConfig":{"portMappings":[{"hostPort":80,"containerPort":80,"protocol":"icmp"}]}}`, `protocol "icmp"`},
		{`{"name":"n","mode":"bridge-tap","runtimeConfig":{"portMappings":[{"hostPort":80,"containerPort":80,"hostIP":"x"}]}}`, `hostIP "x"`},
		{`{"name":"n","mode":"bridge-tap","runtimeConfig":{"mac":"01:00:00:00:00:01"}}`, "multicast"},
		{`{"name":"n","mode":"bridge-tap","nonMasqueradeCIDRs":["10.244.0.0"]}`, `nonMasqueradeCIDRs: "10.244.0.0"`},
		{`{"name":"n","mode":"vmnet-nat","nonMasqueradeCIDRs":["10.244.0.0/16"]}`, "is for bridge-tap"},
	} {
		_, err := LoadConf([]byte(tc.conf))
		var te *types.Error
		if !errors.As(err, &te) || te.Code != types.ErrInvalidNetworkConfig || !strings.Contains(te.Msg, tc.want) {
			t.Errorf("%s: got %v, want code 7 with %q", tc.conf, err, tc.want)
		}
	}
	_, err := LoadConf([]byte(`{"name":`))
	var te *types.Error
	if !errors.As(err, &te) || te.Code != types.ErrDecodingFailure {
		t.Errorf("bad JSON: %v", err)
	}
}

func TestNames(t *testing.T) {
	id := strings.Repeat("0123456789abcdef", 4)
	tap := TapName("macvz", id, "eth0")
	if len(tap) > 15 || !strings.HasPrefix(tap, TapPrefix) || tap != TapName("macvz", id, "eth0") {
		t.Fatalf("tap %q", tap)
	}
	if tap == TapName("macvz", id, "eth1") || tap == TapName("other", id, "eth0") || tap == TapName("macvz", id[1:], "eth0") {
		t.Fatal("tap names collide")
	}
	mac := GuestMAC("macvz", id, "eth0")
	hw, err := net.ParseMAC(mac)
	if err != nil || hw[0]&2 == 0 || hw[0]&1 != 0 || mac != GuestMAC("macvz", id, "eth0") || mac == GuestMAC("macvz", "x", "eth0") {
		t.Fatalf("mac %q", mac)
	}
	if b := BridgeMAC("macvz0"); b[0]&3 != 2 {
		t.Fatalf("bridge mac %s", b)
	}
	tag := Tag("macvz", "eth0", id)
	if !strings.HasPrefix(tag, TagPrefix) || !strings.HasSuffix(tag, " eth0 "+id) || len(tag) > maxTag {
		t.Fatalf("tag %q", tag)
	}
	long := Tag("macvz", "eth0", strings.Repeat("x", 200))
	if len(long) > maxTag || long == Tag("macvz", "eth0", strings.Repeat("x", 201)) {
		t.Fatalf("long tag %q", long)
	}
	if !strings.HasPrefix(long, networkTagPrefix("macvz")) {
		t.Fatalf("long tag lost its network: %q", long)
	}
	c := &NetConf{}
	c.Name = "macvz"
	c.RuntimeConfig.MAC = "AA:BB:CC:DD:EE:00"
	if c.GuestMAC(id, "eth0") != "aa:bb:cc:dd:ee:00" {
		t.Fatal("mac capability ignored")
	}
}

func TestGuestSubnet(t *testing.T) {
	for _, tc := range []struct{ conf, subnet, gw string }{
		{`{"name":"n","mode":"vmnet-nat"}`, "192.168.64.0/24", "192.168.64.1"},
		{`{"name":"n","mode":"socket","socket":"/var/run/socket_vmnet"}`, "192.168.105.0/24", "192.168.105.1"},
		{`{"name":"n","mode":"vmnet-nat","subnet":"10.1.2.0/23","gateway":"10.1.3.254"}`, "10.1.2.0/23", "10.1.3.254"},
		{`{"name":"n","mode":"vmnet-bridged","interface":"en0"}`, "<nil>", "<nil>"},
		{`{"name":"n","mode":"vmnet-bridged","interface":"en0","subnet":"192.168.1.0/24"}`, "192.168.1.0/24", "192.168.1.1"},
	} {
		c, err := LoadConf([]byte(tc.conf))
		if err != nil {
			t.Errorf("%s: %v", tc.conf, err)
			continue
		}
		n, gw, err := c.GuestSubnet()
		if err != nil || n.String() != tc.subnet || gw.String() != tc.gw {
			t.Errorf("%s: subnet %v gateway %v (%v); want %s %s", tc.conf, n, gw, err, tc.subnet, tc.gw)
		}
	}
}

// TestSummary: crictl info says which mode the pods' network is in and
// what it means for them (NAT's isolation above all).
func TestSummary(t *testing.T) {
	for conf, want := range map[string]string{
		`{"name":"n","mode":"vmnet-nat"}`:                                                                             "pods reach neither each other nor the node VM",
		`{"name":"n","mode":"socket","socket":"/var/run/socket_vmnet"}`:                                               "shared network at /var/run/socket_vmnet",
		`{"name":"n","mode":"socket","socket":"/var/run/socket_vmnet.bridged.en0","lan":true,"subnet":"10.0.0.0/24"}`: "bridged network at /var/run/socket_vmnet.bridged.en0 (pods on the LAN; a pod IP is what its guest reports inside 10.0.0.0/24)",
		`{"name":"n","mode":"vmnet-bridged","interface":"en0"}`:                                                       "vmnet-bridged on en0",
	} {
		c, err := LoadConf([]byte(conf))
		if err != nil {
			t.Fatalf("%s: %v", conf, err)
		}
		if got := c.Summary(); !strings.Contains(got, want) {
			t.Errorf("%s: summary %q, want one with %q", conf, got, want)
		}
	}
}

package netplugin

import (
	"errors"
	"net"
	"testing"

	"github.com/containernetworking/cni/pkg/types"
	"github.com/containernetworking/cni/pkg/utils"
)

// FuzzLoadConf gives the plugin arbitrary stdin and CNI arguments: no
// panic; a refusal is a CNI error with a code; an accepted configuration
// holds what LoadConf promises, and the names made from the arguments
// skel accepts fit the kernel's and nft's limits.
func FuzzLoadConf(f *testing.F) {
	for _, c := range []string{
		`{"cniVersion":"1.1.0","name":"n","type":"macvz-net","mode":"bridge-tap"}`,
		`{"cniVersion":"1.1.0","name":"n","mode":"bridge-tap","mtu":1500,"ipam":{"type":"host-local","ranges":[[{"subnet":"10.88.0.0/16","gateway":"10.88.0.1"}]]}}`,
		`{"name":"n","mode":"bridge-tap","runtimeConfig":{"portMappings":[{"hostPort":8080,"containerPort":80,"protocol":"UDP","hostIP":"::1"}],"mac":"02:00:00:00:00:01"}}`,
		`{"name":"n","mode":"vmnet-nat","cni.dev/valid-attachments":[{"containerID":"c","ifname":"eth0"}]}`,
		`{"name":"n","mode":"socket","socket":"/var/run/socket_vmnet"}`,
		`{"name":"n","mode":"vmnet-bridged","interface":"en0","ipam":{}}`,
		`{"name":"n","mode":"bridge-tap","prevResult":{"cniVersion":"1.1.0","interfaces":[{"name":"eth0"}]}}`,
		`{"name":"n","mode":"bridge-tap","ipam":{"type":"host-local","subnet":"10.0.0.0/8"}}`,
		`{"name":`, `[]`, `null`, `{"name":"n","ipam":null}`,
	} {
		f.Add([]byte(c), "0123456789abcdef", "eth0")
	}
	f.Fuzz(func(t *testing.T, stdin []byte, containerID, ifName string) {
		c, err := LoadConf(stdin)
		if err != nil {
			var te *types.Error
			if !errors.As(err, &te) || te.Code == 0 {
				t.Fatalf("LoadConf error without a CNI code: %v", err)
			}
			return
		}
		if c.Name == "" {
			t.Fatal("accepted a configuration without a name")
		}
		if c.MTU != 0 && (c.MTU < 68 || c.MTU > 65535) {
			t.Fatalf("accepted mtu %d", c.MTU)
		}
		for _, pm := range c.RuntimeConfig.PortMappings {
			if pm.HostPort < 1 || pm.HostPort > 65535 || pm.ContainerPort < 1 || pm.ContainerPort > 65535 {
				t.Fatalf("accepted port mapping %+v", pm)
			}
			if pm.Protocol != "tcp" && pm.Protocol != "udp" && pm.Protocol != "sctp" {
				t.Fatalf("accepted protocol %q", pm.Protocol)
			}
		}
		if c.Mode == ModeBridgeTap && (c.IPAM.Type == "" || len(c.ipamStdin) == 0) {
			t.Fatalf("bridge-tap without IPAM: %+v", c.IPAM)
		}
		hw, err := net.ParseMAC(c.GuestMAC(containerID, ifName))
		if err != nil || len(hw) != 6 || hw[0]&1 != 0 {
			t.Fatalf("guest MAC %v (%v): want a unicast 48-bit MAC", hw, err)
		}
		// skel refuses other arguments before the plugin sees them.
		if utils.ValidateContainerID(containerID) != nil || utils.ValidateInterfaceName(ifName) != nil {
			return
		}
		if n := TapName(c.Name, containerID, ifName); len(n) > 15 {
			t.Fatalf("tap name %q longer than IFNAMSIZ-1", n)
		}
		if tag := Tag(c.Name, ifName, containerID); len(tag) > maxTag {
			t.Fatalf("tag %q is %d bytes, over %d", tag, len(tag), maxTag)
		}
	})
}

package cnimgr

import (
	"testing"

	"github.com/containernetworking/cni/libcni"

	"github.com/macvz/macvz/netplugin"
)

func TestDefaultConflist(t *testing.T) {
	nat := netplugin.DefaultMacNetwork(netplugin.SocketVmnetPaths, func(string) bool { return false })
	shared := netplugin.DefaultMacNetwork(netplugin.SocketVmnetPaths, func(p string) bool { return p == "/opt/homebrew/var/run/socket_vmnet" })
	for _, c := range []struct {
		goos       string
		mac        netplugin.MacNetwork
		mode, sock string
	}{
		{"linux", shared, netplugin.ModeBridgeTap, ""},
		{"darwin", nat, netplugin.ModeVmnetNAT, ""},
		{"darwin", shared, netplugin.ModeSocket, "/opt/homebrew/var/run/socket_vmnet"},
		{"darwin", netplugin.MacNetwork{Mode: netplugin.ModeSocket, Socket: `/tmp/a "quoted" path`}, netplugin.ModeSocket, `/tmp/a "quoted" path`},
	} {
		list, err := libcni.NetworkConfFromBytes(DefaultConflist(c.goos, c.mac))
		if err != nil {
			t.Fatalf("%s %s: %v", c.goos, c.mode, err)
		}
		p, err := libcni.InjectConf(list.Plugins[0], map[string]any{"name": list.Name, "cniVersion": list.CNIVersion})
		if err != nil {
			t.Fatal(err)
		}
		conf, err := netplugin.LoadConf(p.Bytes)
		if err != nil {
			t.Fatalf("%s %s: %v", c.goos, c.mode, err)
		}
		if list.Name != "macvz" || list.CNIVersion != "1.1.0" || conf.Mode != c.mode || conf.Socket != c.sock {
			t.Fatalf("%s %s: %+v %+v", c.goos, c.mode, list, conf)
		}
		if got := hasCapability(list, "portMappings"); got != (c.goos == "linux") {
			t.Errorf("%s: portMappings capability %v", c.goos, got)
		}
	}
}

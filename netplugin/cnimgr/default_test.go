package cnimgr

import (
	"testing"

	"github.com/containernetworking/cni/libcni"
	"github.com/macvz/macvz/netplugin"
)

func TestDefaultConflist(t *testing.T) {
	for goos, mode := range map[string]string{"linux": netplugin.ModeBridgeTap, "darwin": netplugin.ModeVmnetNAT} {
		list, err := libcni.NetworkConfFromBytes(DefaultConflist(goos))
		if err != nil {
			t.Fatalf("%s: %v", goos, err)
		}
		p, err := libcni.InjectConf(list.Plugins[0], map[string]any{"name": list.Name, "cniVersion": list.CNIVersion})
		if err != nil {
			t.Fatal(err)
		}
		c, err := netplugin.LoadConf(p.Bytes)
		if err != nil {
			t.Fatalf("%s: %v", goos, err)
		}
		if list.Name != "macvz" || list.CNIVersion != "1.1.0" || c.Mode != mode {
			t.Fatalf("%s: %+v %+v", goos, list, c)
		}
		if got := hasCapability(list, "portMappings"); got != (goos == "linux") {
			t.Errorf("%s: portMappings capability %v", goos, got)
		}
	}
}

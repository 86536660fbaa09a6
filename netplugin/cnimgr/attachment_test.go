package cnimgr

import (
	"testing"

	"github.com/containernetworking/cni/libcni"
	current "github.com/containernetworking/cni/pkg/types/100"

	"github.com/macvz/macvz/netplugin"
	"github.com/macvz/macvz/runtime/vm"
)

// TestAttachmentSocketLAN: a socket network's "lan" (socket_vmnet's
// bridged mode) reaches the attachment, with the LAN's subnet, so the
// daemon takes the guest's address instead of waiting for a host lease.
func TestAttachmentSocketLAN(t *testing.T) {
	for _, tc := range []struct {
		conf   string
		lan    bool
		subnet string
	}{
		{`{"cniVersion":"1.0.0","name":"lan","type":"macvz-net","mode":"socket","socket":"/var/run/socket_vmnet.bridged.en0","lan":true,"subnet":"192.168.1.0/24","gateway":"192.168.1.254"}`, true, "192.168.1.0/24"},
		{`{"cniVersion":"1.0.0","name":"shared","type":"macvz-net","mode":"socket","socket":"/var/run/socket_vmnet"}`, false, "192.168.105.0/24"},
	} {
		conf, err := netplugin.LoadConf([]byte(tc.conf))
		if err != nil {
			t.Fatal(err)
		}
		list, err := libcni.ConfListFromBytes([]byte(`{"cniVersion":"1.0.0","name":"` + conf.Name + `","plugins":[` + tc.conf + `]}`))
		if err != nil {
			t.Fatal(err)
		}
		res := &current.Result{
			CNIVersion: current.ImplementedSpecVersion,
			Interfaces: []*current.Interface{
				{Name: netplugin.HostSocket, SocketPath: conf.Socket},
				{Name: "eth0", Mac: "02:00:00:00:00:07", Sandbox: "/run/macvz/sb", SocketPath: conf.Socket},
			},
		}
		a, err := (&Manager{}).attachment(list, conf, &libcni.RuntimeConf{ContainerID: "sb", IfName: "eth0"}, res)
		if err != nil {
			t.Fatalf("%s: %v", conf.Name, err)
		}
		if a.Kind != vm.NICSocket || a.Device != conf.Socket || a.LAN != tc.lan || a.Subnet.String() != tc.subnet {
			t.Errorf("%s: attachment %+v", conf.Name, a)
		}
	}
}

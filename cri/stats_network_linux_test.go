package cri

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/macvz/macvz/runtime/store"
	"github.com/macvz/macvz/runtime/vm"
)

// A tap NIC's counters are the pod's traffic the other way round.
func TestNICUsage(t *testing.T) {
	dir := t.TempDir()
	old := sysClassNet
	sysClassNet = dir
	t.Cleanup(func() { sysClassNet = old })
	stats := filepath.Join(dir, "tapabc", "statistics")
	if err := os.MkdirAll(stats, 0o755); err != nil {
		t.Fatal(err)
	}
	for name, v := range map[string]string{"rx_bytes": "100\n", "rx_errors": "1\n", "tx_bytes": "2000\n", "tx_errors": "2\n"} {
		if err := os.WriteFile(filepath.Join(stats, name), []byte(v), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	n := &store.Network{NIC: vm.NIC{Kind: vm.NICTap, Device: "tapabc"}, IfName: "eth0"}
	u := nicUsage(n, 42)
	i := u.GetDefaultInterface()
	if u.GetTimestamp() != 42 || i.GetName() != "eth0" || i.GetRxBytes().GetValue() != 2000 || i.GetRxErrors().GetValue() != 2 ||
		i.GetTxBytes().GetValue() != 100 || i.GetTxErrors().GetValue() != 1 || len(u.GetInterfaces()) != 1 {
		t.Errorf("nicUsage = %v", u)
	}
	for _, n := range []*store.Network{
		{NIC: vm.NIC{Kind: vm.NICUser}},
		{NIC: vm.NIC{Kind: vm.NICTap, Device: "missing"}},
		{NIC: vm.NIC{Kind: vm.NICTap, Device: "../tapabc"}},
	} {
		if u := nicUsage(n, 1); u != nil {
			t.Errorf("nicUsage(%+v) = %v, want none", n.NIC, u)
		}
	}
}

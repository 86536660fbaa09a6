package cri

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/macvz/macvz/runtime/store"
	"github.com/macvz/macvz/runtime/vm"
)

// sysClassNet is where the host's interfaces' counters are (a test
// points it elsewhere).
var sysClassNet = "/sys/class/net"

// nicUsage is a pod's network traffic, read where the host sees it: the
// agent measures none, but a tap NIC is a host interface whose counters
// are the VM's every frame, in the other direction (what the tap
// receives, the guest sent). The interface is named as in the pod, its
// CNI_IFNAME. Other NICs (QEMU's user-mode network, which has no host
// interface) report nothing: kubelet then leaves the pod's network out.
func nicUsage(n *store.Network, ts int64) *runtimeapi.NetworkUsage {
	if n.NIC.Kind != vm.NICTap || n.NIC.Device == "" || strings.ContainsAny(n.NIC.Device, "/\x00") {
		return nil
	}
	dir := filepath.Join(sysClassNet, n.NIC.Device, "statistics")
	var vals [4]uint64
	for i, name := range []string{"tx_bytes", "tx_errors", "rx_bytes", "rx_errors"} {
		b, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			return nil
		}
		if vals[i], err = strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64); err != nil {
			return nil
		}
	}
	name := n.IfName
	if name == "" {
		name = "eth0"
	}
	iface := &runtimeapi.NetworkInterfaceUsage{
		Name:    name,
		RxBytes: u64(vals[0]), RxErrors: u64(vals[1]),
		TxBytes: u64(vals[2]), TxErrors: u64(vals[3]),
	}
	return &runtimeapi.NetworkUsage{Timestamp: ts, DefaultInterface: iface, Interfaces: []*runtimeapi.NetworkInterfaceUsage{iface}}
}

//go:build linux

package netplugin_test

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"
	"github.com/macvz/macvz/integration/nettest"
)

// BenchmarkAddDel measures a CNI ADD+DEL cycle of macvz-net (tap, IPAM,
// nftables NAT) against the reference bridge plugin (veth into a
// namespace, IPAM, nftables masquerade) in the same run, alternating the
// two so both see the same machine. Both go through libcni and host-local
// the same way. It reports p50 and p99 of each and their ratios (the
// target is macvz/bridge <= 1.5). Run with -benchtime=100x for 100 cycles.
func BenchmarkAddDel(b *testing.B) {
	nettest.Require(b)
	n := nettest.NewNetNS(b, "bench")
	container := nettest.NewNetNS(b, "ctr") // the bridge plugin's container side
	bin := nettest.PluginDir(b, n, binDir, "macvz-net", "bridge")
	cni := libcni.NewCNIConfigWithCacheDir([]string{bin}, b.TempDir(), nil)
	ipamDir := b.TempDir()
	ours, err := libcni.NetworkConfFromBytes([]byte(conflist(ipamDir, "10.88.0.0/16", "macvz0")))
	if err != nil {
		b.Fatal(err)
	}
	ref, err := libcni.NetworkConfFromBytes([]byte(fmt.Sprintf(`{"cniVersion":"1.1.0","name":"ref","plugins":[{"type":"bridge",
		"bridge":"cni0","isGateway":true,"ipMasq":true,"ipMasqBackend":"nftables",
		"ipam":{"type":"host-local","ranges":[[{"subnet":"10.89.0.0/16"}]],"routes":[{"dst":"0.0.0.0/0"}],"dataDir":%q}}]}`, ipamDir)))
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	cycle := func(list *libcni.NetworkConfigList, netns string, i int) time.Duration {
		rt := &libcni.RuntimeConf{ContainerID: sandboxID(i), NetNS: netns, IfName: "eth0"}
		start := time.Now()
		if _, err := cni.AddNetworkList(ctx, list, rt); err != nil {
			b.Fatalf("%s ADD: %v", list.Name, err)
		}
		if err := cni.DelNetworkList(ctx, list, rt); err != nil {
			b.Fatalf("%s DEL: %v", list.Name, err)
		}
		return time.Since(start)
	}
	// Warm up both (bridges, tables, page cache).
	cycle(ours, "/var/lib/macvz/sandboxes/x", 0)
	cycle(ref, container.Path, 0)

	var tOurs, tRef []time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		tOurs = append(tOurs, cycle(ours, "/var/lib/macvz/sandboxes/x", i))
		tRef = append(tRef, cycle(ref, container.Path, i))
	}
	b.StopTimer()
	pct := func(ds []time.Duration, p float64) float64 {
		s := slices.Clone(ds)
		slices.Sort(s)
		return float64(s[int(p*float64(len(s)-1)+0.5)].Microseconds()) / 1000
	}
	p50, p99 := pct(tOurs, 0.50), pct(tOurs, 0.99)
	r50, r99 := pct(tRef, 0.50), pct(tRef, 0.99)
	b.ReportMetric(p50, "macvz-p50-ms")
	b.ReportMetric(p99, "macvz-p99-ms")
	b.ReportMetric(r50, "bridge-p50-ms")
	b.ReportMetric(r99, "bridge-p99-ms")
	b.ReportMetric(p50/r50, "ratio-p50")
	b.ReportMetric(p99/r99, "ratio-p99")
}

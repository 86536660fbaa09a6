package agent

import (
	"strings"
	"testing"

	api "github.com/macvz/macvz/runtime/agentapi"
)

// FuzzNetworkPlans builds the DNS and network plans from an arbitrary
// request and arbitrary networksetup output and interface names: no
// panic, and every command line a plan returns passes checkArgv (no NUL,
// no value where an option could be read).
func FuzzNetworkPlans(f *testing.F) {
	f.Add(serviceOrderOut, "en1", "52:54:00:00:00:01", "", "eth0", uint32(1500), "10.0.0.2/24,fd00::2/64,10.0.0.3/24", "", "10.0.0.1", "", "1.1.1.1,fe80::1%en0", "example.com")
	f.Add(serviceOrderOut, "en1", "52:54:00:00:00:09", "52:54:00:00:00:02", "", uint32(0), "192.168.64.5/24", "10.1.0.0/16", "", "eth0", "", "")
	f.Add("(1) -setmanual\n(Hardware Port: x, Device: en0)\n", "-arp", "52:54:00:00:00:02", "", "-x", uint32(9000), "fd00::5/64", "::/0", "fd00::1", "", "::1", "-x")
	f.Add("(1) A\x00B\n(Hardware Port: x, Device: en0)\n", "en1", "-up", "52:54:00:00:00:01", "n", uint32(1), "", "10.0.0.0/8", "", "n", "", "a\x00b")
	f.Add("", "", "", "", "", uint32(0), "", "default", "fe80::1%-x", "", "fe80::1%\x00", "")
	f.Fuzz(func(t *testing.T, order, dev2, mac, prevMAC, name string, mtu uint32, addrs, dst, gw, routeDev, servers, searches string) {
		svcs := parseServiceOrder(order)
		byMAC := map[string]string{"52:54:00:00:00:01": "en0", "52:54:00:00:00:02": dev2}
		req := &api.ConfigureNetworkRequest{
			Interfaces: []*api.Interface{{Mac: mac, PreviousMac: prevMAC, Name: name, Mtu: mtu, Addresses: split(addrs)}},
			Routes:     []*api.Route{{Destination: dst, Gateway: gw, Device: routeDev}},
		}
		if cmds, err := networkPlan(req, byMAC, svcs); err == nil {
			for _, c := range cmds {
				if err := checkArgv(c.tool, c.args); err != nil {
					t.Fatalf("plan command %s: %v", c, err)
				}
				switch c.tool {
				case "networksetup", "ifconfig", "route":
				default:
					t.Fatalf("plan runs %q", c.tool)
				}
			}
		}
		if cmds, err := dnsCommands(svcs, split(servers), split(searches)); err == nil {
			for _, c := range cmds {
				if err := checkArgv("networksetup", c); err != nil {
					t.Fatalf("DNS command %q: %v", c, err)
				}
			}
		}
	})
}

func split(s string) []string {
	if s == "" {
		return nil
	}
	return strings.Split(s, ",")
}

// FuzzToolOutput parses arbitrary text as the output of networksetup,
// vm_stat and ps, and arbitrary sysctl names: no panic, no endless loop
// (a ps listing may have cycles), and the numbers keep their bounds.
func FuzzToolOutput(f *testing.F) {
	f.Add(serviceOrderOut, "kern.ipc.somaxconn")
	f.Add("Mach Virtual Memory Statistics: (page size of 16384 bytes)\nPages free:  12345.\nPages active: 99.\n\"Anonymous pages\": 7.\n", "a/b/c")
	f.Add("  1     0  1024   0:01.50\n  2     1  2048 1-02:03:04.5\n  3     3  10  123:45.67\n  4  2 -1 0:00\n", "-w")
	f.Add("(page size of 18446744073709551615 bytes)\nPages free: 18446744073709551615.\n", ".x")
	f.Add("1 2 3 99999999999999999999:1\n2 1 5 1e300\n", "x\x00y")
	f.Fuzz(func(t *testing.T, out, sysctl string) {
		parseServiceOrder(out)
		if v, err := parseVMStat(out); err == nil {
			const total = 8 << 30
			m := memoryStats(total, v)
			if m.AvailableBytes > total || m.UsageBytes > total || m.WorkingSetBytes > m.UsageBytes {
				t.Fatalf("memory stats out of bounds: %+v", m)
			}
		}
		ps := parsePS(out)
		roots := map[int]string{}
		for i, p := range ps {
			if i%2 == 0 {
				roots[p.pid] = "c"
			}
		}
		for id, cs := range treeStats(ps, roots) {
			if int(cs.Processes) > len(ps) {
				t.Fatalf("container %s counts %d processes of %d", id, cs.Processes, len(ps))
			}
		}
		for _, n := range parseNetstat(out) {
			if n.Name == "" || n.Name == "lo0" {
				t.Fatalf("interface %q reported", n.Name)
			}
		}
		for _, p := range ps {
			if p.user > p.cpu {
				t.Fatalf("user time %v above the whole %v", p.user, p.cpu)
			}
		}
		var c cpuTotal
		c.sample(ps)
		c.sample(ps[:len(ps)/2])
		for _, f := range strings.Fields(out) {
			parseCPUTime(f)
		}
		if n, err := sysctlName(sysctl); err == nil {
			if strings.HasPrefix(n, "-") || strings.ContainsRune(n, 0) || strings.ContainsAny(n, " =") {
				t.Fatalf("sysctl name %q accepted", n)
			}
		}
	})
}

// Values that would pass for options or hold a NUL end the plans with an
// error instead of reaching a command line.
func TestPlansRefuseOptionLikeValues(t *testing.T) {
	dashSvc := parseServiceOrder("(1) -setmanual\n(Hardware Port: x, Device: en0)\n")
	byMAC := map[string]string{"52:54:00:00:00:01": "en0"}
	if _, err := dnsCommands(dashSvc, []string{"1.1.1.1"}, nil); err == nil {
		t.Error("DNS plan for a service named -setmanual")
	}
	if _, err := dnsCommands(parseServiceOrder(serviceOrderOut), nil, []string{"a\x00b"}); err == nil {
		t.Error("DNS plan with a NUL in a search domain")
	}
	req := &api.ConfigureNetworkRequest{
		Interfaces: []*api.Interface{{Mac: "52:54:00:00:00:01", Addresses: []string{"10.0.0.2/24"}}},
		Routes:     []*api.Route{{Destination: "0.0.0.0/0", Gateway: "10.0.0.1"}},
	}
	if _, err := networkPlan(req, byMAC, dashSvc); err == nil {
		t.Error("network plan for a service named -setmanual")
	}
	req = &api.ConfigureNetworkRequest{Interfaces: []*api.Interface{{Mac: "-up", PreviousMac: "52:54:00:00:00:01"}}}
	if _, err := networkPlan(req, byMAC, nil); err == nil {
		t.Error("network plan giving ifconfig the MAC -up")
	}
	req = &api.ConfigureNetworkRequest{Routes: []*api.Route{{Destination: "10.1.0.0/16", Device: "en\x000"}}}
	if _, err := networkPlan(req, byMAC, nil); err == nil {
		t.Error("network plan with a NUL in a route device")
	}
}

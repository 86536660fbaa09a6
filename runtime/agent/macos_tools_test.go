package agent

import (
	"reflect"
	"strings"
	"testing"
	"time"

	api "github.com/macvz/macvz/runtime/agentapi"
)

const serviceOrderOut = `An asterisk (*) denotes that a network service is disabled.
(1) Ethernet
(Hardware Port: Ethernet, Device: en0)

(2) USB 10/100/1000 LAN
(Hardware Port: USB 10/100/1000 LAN, Device: en5)

(*) Thunderbolt Bridge
(Hardware Port: Thunderbolt Bridge, Device: bridge0)

(3) Tailscale
(Hardware Port: com.tailscale.ipn.macos, Device: )
`

func TestParseServiceOrder(t *testing.T) {
	got := parseServiceOrder(serviceOrderOut)
	want := []netService{
		{Name: "Ethernet", Device: "en0"},
		{Name: "USB 10/100/1000 LAN", Device: "en5"},
		{Name: "Thunderbolt Bridge", Device: "bridge0", Disabled: true},
		{Name: "Tailscale", Device: ""},
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("got %+v\nwant %+v", got, want)
	}
	if s, ok := serviceFor(got, "bridge0"); ok {
		t.Errorf("a disabled service was chosen: %+v", s)
	}
	if s, ok := serviceFor(got, "en5"); !ok || s.Name != "USB 10/100/1000 LAN" {
		t.Errorf("serviceFor en5: %+v %v", s, ok)
	}
}

func TestDNSCommands(t *testing.T) {
	svcs := parseServiceOrder(serviceOrderOut)
	got, err := dnsCommands(svcs, []string{"10.96.0.10"}, []string{"default.svc.cluster.local", "svc.cluster.local"})
	if err != nil {
		t.Fatal(err)
	}
	want := [][]string{
		{"-setdnsservers", "Ethernet", "10.96.0.10"},
		{"-setsearchdomains", "Ethernet", "default.svc.cluster.local", "svc.cluster.local"},
		{"-setdnsservers", "USB 10/100/1000 LAN", "10.96.0.10"},
		{"-setsearchdomains", "USB 10/100/1000 LAN", "default.svc.cluster.local", "svc.cluster.local"},
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("got %q\nwant %q", got, want)
	}
	// Nothing given clears what an earlier call set.
	got, _ = dnsCommands(svcs[:1], nil, nil)
	want = [][]string{{"-setdnsservers", "Ethernet", "Empty"}, {"-setsearchdomains", "Ethernet", "Empty"}}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("empty: got %q", got)
	}
	if _, err := dnsCommands(svcs, []string{"-setv6off"}, nil); err == nil {
		t.Error("a name server that is an option")
	}
	if _, err := dnsCommands(svcs, []string{"fd00::a"}, []string{"-x"}); err == nil {
		t.Error("a search domain that is an option")
	}
}

func planStrings(cmds []netCommand) []string {
	var s []string
	for _, c := range cmds {
		s = append(s, c.String())
	}
	return s
}

func TestNetworkPlan(t *testing.T) {
	svcs := parseServiceOrder(serviceOrderOut)
	byMAC := map[string]string{"02:00:00:00:00:01": "en0", "02:00:00:00:00:09": "en5"}

	// DHCP (vmnet NAT): nothing to do.
	cmds, err := networkPlan(&api.ConfigureNetworkRequest{}, byMAC, svcs)
	if err != nil || len(cmds) != 0 {
		t.Fatalf("empty request: %v %v", cmds, err)
	}
	cmds, err = networkPlan(&api.ConfigureNetworkRequest{Interfaces: []*api.Interface{{Mac: "02:00:00:00:00:01", Name: "eth0"}}}, byMAC, svcs)
	if err != nil || len(cmds) != 0 {
		t.Fatalf("interface without addresses: %v %v", cmds, err)
	}

	// A bridged pod with static addresses, the way the CNI result comes.
	req := &api.ConfigureNetworkRequest{
		Interfaces: []*api.Interface{{
			Mac: "02:00:00:00:00:01", Name: "eth0", Mtu: 1400,
			Addresses: []string{"10.88.0.5/16", "fd00::5/64", "10.99.0.5/24", "fd01::5/64"},
		}},
		Routes: []*api.Route{
			{Destination: "", Gateway: "10.88.0.1", Device: "eth0"},
			{Destination: "::/0", Gateway: "fd00::1", Device: "eth0"},
			{Destination: "192.168.0.0/16", Gateway: "10.88.0.254", Device: "eth0"},
			{Destination: "10.200.0.0/16", Device: "eth0"},
		},
	}
	cmds, err = networkPlan(req, byMAC, svcs)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{
		"ifconfig en0 mtu 1400",
		"networksetup -setmanual Ethernet 10.88.0.5 255.255.0.0 10.88.0.1",
		"networksetup -setv6manual Ethernet fd00::5 64 fd00::1",
		"ifconfig en0 inet 10.99.0.5 netmask 255.255.255.0 alias",
		"ifconfig en0 inet6 fd01::5/64 alias",
		"route -n add -net 192.168.0.0/16 10.88.0.254",
		"route -n add -net 10.200.0.0/16 -interface en0",
	}
	if got := planStrings(cmds); !reflect.DeepEqual(got, want) {
		t.Fatalf("plan:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if cmds[len(cmds)-1].exists != "File exists" {
		t.Errorf("an existing route must be fine (the call is repeated)")
	}

	// No default route: the address alone; the route goes to route(8).
	cmds, err = networkPlan(&api.ConfigureNetworkRequest{
		Interfaces: []*api.Interface{{Mac: "02:00:00:00:00:09", Addresses: []string{"10.1.0.2/24"}}},
		Routes:     []*api.Route{{Destination: "::/0", Gateway: "fd00::1"}},
	}, byMAC, svcs)
	if err != nil {
		t.Fatal(err)
	}
	want = []string{"ifconfig en5 inet 10.1.0.2 netmask 255.255.255.0 alias", "route -n add -inet6 default fd00::1"}
	if got := planStrings(cmds); !reflect.DeepEqual(got, want) {
		t.Fatalf("plan without router: %q", got)
	}

	// A restored VM still has the MAC it was saved with.
	cmds, err = networkPlan(&api.ConfigureNetworkRequest{Interfaces: []*api.Interface{{Mac: "02:AA:00:00:00:07", PreviousMac: "02:00:00:00:00:01"}}}, byMAC, svcs)
	if err != nil || len(cmds) != 1 || cmds[0].String() != "ifconfig en0 ether 02:aa:00:00:00:07" {
		t.Fatalf("previous MAC: %q %v", planStrings(cmds), err)
	}

	for name, bad := range map[string]*api.ConfigureNetworkRequest{
		"unknown MAC":      {Interfaces: []*api.Interface{{Mac: "02:00:00:00:00:02"}}},
		"unknown previous": {Interfaces: []*api.Interface{{Mac: "02:00:00:00:00:02", PreviousMac: "02:00:00:00:00:03"}}},
		"bad address":      {Interfaces: []*api.Interface{{Mac: "02:00:00:00:00:01", Addresses: []string{"10.0.0.300/8"}}}},
		"route nowhere":    {Routes: []*api.Route{{Destination: "10.0.0.0/8"}}},
		"bad gateway":      {Routes: []*api.Route{{Destination: "10.0.0.0/8", Gateway: "gw"}}},
		"bad destination":  {Routes: []*api.Route{{Destination: "-ifscope", Gateway: "10.0.0.1"}}},
		"option device":    {Routes: []*api.Route{{Destination: "10.0.0.0/8", Device: "-static"}}},
	} {
		if _, err := networkPlan(bad, byMAC, svcs); err == nil {
			t.Errorf("%s: no error", name)
		}
	}
}

// vm_stat of a 4 GiB macOS 14 guest.
const vmStatOut = `Mach Virtual Memory Statistics: (page size of 16384 bytes)
Pages free:                               50000.
Pages active:                             60000.
Pages inactive:                           40000.
Pages speculative:                        10000.
Pages throttled:                              0.
Pages wired down:                         30000.
Pages purgeable:                           2000.
"Translation faults":                  98765432.
Pages copy-on-write:                     123456.
Pages zero filled:                      7654321.
Pages reactivated:                          100.
Pages purged:                                 0.
File-backed pages:                        45000.
Anonymous pages:                          55000.
Pages stored in compressor:                8000.
Pages occupied by compressor:              4000.
Decompressions:                               0.
Compressions:                                 0.
Pageins:                                  10000.
Pageouts:                                     0.
Swapins:                                      0.
Swapouts:                                     0.
`

func TestMemoryStats(t *testing.T) {
	v, err := parseVMStat(vmStatOut)
	if err != nil {
		t.Fatal(err)
	}
	if v.pageSize != 16384 || v.pages["Translation faults"] != 98765432 || v.pages["Anonymous pages"] != 55000 {
		t.Fatalf("parsed %+v", v)
	}
	const page, total = 16384, 4 << 30 // 262144 pages
	m := memoryStats(total, v)
	want := &api.MemoryStats{
		TotalBytes:      total,
		AvailableBytes:  (50000 + 10000 + 40000 + 2000) * page,
		UsageBytes:      total - (50000+10000)*page,
		WorkingSetBytes: (30000 + 60000 + 4000) * page,
		RssBytes:        55000 * page,
	}
	if !reflect.DeepEqual(m, want) {
		t.Errorf("got %+v\nwant %+v", m, want)
	}
	if _, err := parseVMStat("vm_stat: command not found"); err == nil {
		t.Error("garbage parsed")
	}
}

func TestParseCPUTime(t *testing.T) {
	for in, want := range map[string]time.Duration{
		"0:00.05":     50 * time.Millisecond,
		"12:34.56":    12*time.Minute + 34560*time.Millisecond,
		"123:45.67":   123*time.Minute + 45670*time.Millisecond,
		"1:02:03":     time.Hour + 2*time.Minute + 3*time.Second,
		"2-01:00:00":  49 * time.Hour,
		"7.5":         7500 * time.Millisecond,
		"1-00:00.000": 24 * time.Hour,
	} {
		got, err := parseCPUTime(in)
		if err != nil || got != want {
			t.Errorf("%q: %v %v, want %v", in, got, err, want)
		}
	}
	for _, bad := range []string{"", "x:00", "1:2:3:4", "a-1:00", "-1.0"} {
		if _, err := parseCPUTime(bad); err == nil {
			t.Errorf("%q parsed", bad)
		}
	}
}

const psOut = `    1     0  12000   0:10.00
  100     1   4000   0:01.50
  200   100   2048   0:00.50
  201   200   1024   0:00.25
  300     1   8192   1:00.00
  garbage line
`

func TestProcessStats(t *testing.T) {
	ps := parsePS(psOut)
	if len(ps) != 5 || ps[2] != (psProc{pid: 200, ppid: 100, rssBytes: 2048 << 10, cpu: 500 * time.Millisecond}) {
		t.Fatalf("parsed %+v", ps)
	}
	// Container a's process is 200 (with its child 201); b's is 300; c's
	// has exited.
	st := treeStats(ps, map[int]string{200: "a", 300: "b", 999: "c"})
	if a := st["a"]; a.Processes != 2 || a.CpuUsageCoreNanoseconds != uint64(750*time.Millisecond) || a.MemoryRssBytes != 3072<<10 {
		t.Errorf("a: %+v", a)
	}
	if b := st["b"]; b.Processes != 1 || b.CpuUsageCoreNanoseconds != uint64(time.Minute) {
		t.Errorf("b: %+v", b)
	}
	if c := st["c"]; c == nil || c.Processes != 0 {
		t.Errorf("c: %+v", c)
	}

	// The guest's total never goes back when processes exit.
	var ct cpuTotal
	t1 := ct.sample(ps)
	if t1 != 10*time.Second+1500*time.Millisecond+750*time.Millisecond+time.Minute {
		t.Fatalf("first sample %v", t1)
	}
	t2 := ct.sample(ps[:2]) // 200, 201 and 300 exited
	if t2 != t1 {
		t.Errorf("after exits: %v, want %v", t2, t1)
	}
	// 100 ran on; pid 200 is reused by a new process.
	t3 := ct.sample([]psProc{{pid: 1, cpu: 10 * time.Second}, {pid: 100, cpu: 2 * time.Second}, {pid: 200, cpu: 100 * time.Millisecond}})
	if want := t1 + 500*time.Millisecond + 100*time.Millisecond; t3 != want {
		t.Errorf("third sample %v, want %v", t3, want)
	}
}

// TestProcessUserTime: ps's fifth column is a process's user time,
// never more than its whole time; the guest's user total is kept as
// the whole one is.
func TestProcessUserTime(t *testing.T) {
	ps := parsePS("    1     0  12000   0:10.00   0:06.00\n  100     1  4000  0:01.00  0:09.00\n  200   1  10  0:02.00\n")
	if len(ps) != 3 || ps[0].user != 6*time.Second || ps[1].user != time.Second || ps[2].user != 0 {
		t.Fatalf("parsed %+v", ps)
	}
	var all, user cpuTotal
	if a, u := all.sample(ps), user.sample(userOnly(ps)); a != 13*time.Second || u != 7*time.Second {
		t.Errorf("totals %v, user %v", a, u)
	}
}

// netstatOut is `netstat -ibn` as macOS prints it: link rows with and
// without an address, address rows, a down interface.
const netstatOut = `Name       Mtu   Network       Address            Ipkts Ierrs     Ibytes    Opkts Oerrs     Obytes  Coll
lo0        16384 <Link#1>                          5012     0     734560     5012     0     734560     0
lo0        16384 127           127.0.0.1           5012     -     734560     5012     -     734560     -
en0        1500  <Link#4>    a2:11:22:33:44:55   120345     2  150000000    80211     1    9000000     0
en0        1500  192.168.64    192.168.64.5      120000     -  149000000    80000     -    8990000     -
en0        1500  fe80::a011:2 fe80:4::a011:22ff:    100     -      10000      200     -      20000     -
gif0*      1280  <Link#2>                             0     0          0        0     0          0     0
en1        1500  <Link#5>    a2:11:22:33:44:66   x  0  0  0  0  0  0
`

func TestParseNetstat(t *testing.T) {
	got := parseNetstat(netstatOut)
	if len(got) != 2 {
		t.Fatalf("interfaces %v; want en0 and gif0", got)
	}
	if e := got[0]; e.Name != "en0" || e.RxPackets != 120345 || e.RxErrors != 2 || e.RxBytes != 150000000 || e.TxPackets != 80211 || e.TxErrors != 1 || e.TxBytes != 9000000 {
		t.Errorf("en0: %+v", e)
	}
	if g := got[1]; g.Name != "gif0" || g.RxBytes != 0 {
		t.Errorf("gif0: %+v", g)
	}
	if parseNetstat("Name Mtu Network Address Ipkts Ierrs Ibytes Opkts Oerrs Obytes Coll Drop\nen0 1500 <Link#4> a 1 2 3 4 5 6 7 8\n") != nil {
		t.Error("a header of another shape is read")
	}
}

func TestSysctlName(t *testing.T) {
	if n, err := sysctlName("kern/maxfiles"); err != nil || n != "kern.maxfiles" {
		t.Errorf("%q %v", n, err)
	}
	for _, bad := range []string{"", ".kern", "kern.", "-w", "kern.x=1", "kern maxfiles", "kern;reboot"} {
		if _, err := sysctlName(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

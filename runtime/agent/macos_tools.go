package agent

// What the macOS guest agent learns from and asks of the system tools
// (ps, vm_stat, networksetup, route, ifconfig, sysctl). The parsing and
// the command plans are here, without a build tag, so that they are
// tested on Linux against captured output; system_darwin.go only runs
// the commands.

import (
	"bufio"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"time"

	api "github.com/macvz/macvz/runtime/agentapi"
)

// netService is a macOS network service (System Settings' "Ethernet")
// and the device it runs on.
type netService struct {
	Name     string
	Device   string
	Disabled bool
}

// parseServiceOrder reads `networksetup -listnetworkserviceorder`:
//
//	(1) Ethernet
//	(Hardware Port: Ethernet, Device: en0)
//
//	(*) Thunderbolt Bridge
//	(Hardware Port: Thunderbolt Bridge, Device: bridge0)
func parseServiceOrder(out string) []netService {
	var svcs []netService
	var cur *netService
	sc := bufio.NewScanner(strings.NewReader(out))
	for sc.Scan() {
		l := strings.TrimSpace(sc.Text())
		if !strings.HasPrefix(l, "(") {
			continue
		}
		if strings.HasPrefix(l, "(Hardware Port:") {
			if cur != nil {
				if i := strings.LastIndex(l, "Device:"); i >= 0 {
					cur.Device = strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(l[i+len("Device:"):]), ")"))
				}
			}
			continue
		}
		end := strings.Index(l, ")")
		if end < 0 {
			continue
		}
		tag, name := l[1:end], strings.TrimSpace(l[end+1:])
		if name == "" {
			continue
		}
		svcs = append(svcs, netService{Name: name, Disabled: tag == "*"})
		cur = &svcs[len(svcs)-1]
	}
	return svcs
}

// serviceFor is the enabled service running on device.
func serviceFor(svcs []netService, device string) (netService, bool) {
	for _, s := range svcs {
		if s.Device == device && !s.Disabled {
			return s, true
		}
	}
	return netService{}, false
}

// dnsCommands are the networksetup calls that give each enabled service
// with a device the pod's name servers and search domains. networksetup
// writes the service's configuration, which a DHCP renewal does not
// replace, and configd regenerates /etc/resolv.conf from it. "Empty"
// clears a list.
func dnsCommands(svcs []netService, servers, searches []string) ([][]string, error) {
	// Each value is an argument of its own; none may pass for an option.
	for _, v := range servers {
		if _, err := netip.ParseAddr(v); err != nil {
			return nil, fmt.Errorf("name server %q is not an IP address", v)
		}
	}
	for _, v := range searches {
		if strings.HasPrefix(v, "-") {
			return nil, fmt.Errorf("invalid search domain %q", v)
		}
	}
	ns := append([]string{}, servers...)
	if len(ns) == 0 {
		ns = []string{"Empty"}
	}
	sd := append([]string{}, searches...)
	if len(sd) == 0 {
		sd = []string{"Empty"}
	}
	var cmds [][]string
	for _, s := range svcs {
		if s.Disabled || s.Device == "" {
			continue
		}
		cmds = append(cmds,
			append([]string{"-setdnsservers", s.Name}, ns...),
			append([]string{"-setsearchdomains", s.Name}, sd...))
	}
	for _, c := range cmds {
		if err := checkArgv("networksetup", c); err != nil {
			return nil, err
		}
	}
	return cmds, nil
}

// routeOptions are the options networkPlan gives route(8); every other
// argument is a value.
var routeOptions = map[string]bool{"-n": true, "-inet6": true, "-net": true, "-interface": true}

// checkArgv checks a command line a plan made before it runs: no argument
// holds a NUL (exec would refuse it) and none that is a value (a service
// name, an address, a device: all from a request or the system's output)
// could be read as an option. networksetup takes one option, first;
// ifconfig none (its negations like -arp are words of their own); route
// only those of routeOptions, never where -net or -interface wants its
// value (the gateway, the other value, is a parsed address).
func checkArgv(tool string, args []string) error {
	for i, a := range args {
		if strings.ContainsRune(a, 0) {
			return fmt.Errorf("%s argument %q contains a NUL", tool, a)
		}
		if !strings.HasPrefix(a, "-") {
			continue
		}
		switch {
		case tool == "networksetup" && i == 0:
		case tool == "route" && routeOptions[a] && (i == 0 || args[i-1] != "-net" && args[i-1] != "-interface"):
		default:
			return fmt.Errorf("%s argument %q could be read as an option", tool, a)
		}
	}
	return nil
}

// netCommand is one command of a network plan: the tool (networksetup,
// ifconfig, route) and its arguments. exists says an error whose output
// contains it means the change is already there.
type netCommand struct {
	tool   string
	args   []string
	exists string
}

func (c netCommand) String() string { return c.tool + " " + strings.Join(c.args, " ") }

// networkPlan turns a ConfigureNetwork request into commands for a macOS
// guest. byMAC maps the guest's MAC addresses to interface names. macOS
// cannot rename interfaces: a requested name is only used to find the
// interface a route names. The first IPv4 and the first IPv6 address of
// an interface become its service's manual configuration when there is
// a default route of that family (networksetup wants a router; the
// configuration then outlives DHCP and reboots); other addresses are
// aliases until reboot; other routes are added with route(8).
// An interface without addresses is left to DHCP.
func networkPlan(req *api.ConfigureNetworkRequest, byMAC map[string]string, svcs []netService) ([]netCommand, error) {
	var cmds []netCommand
	names := map[string]string{} // requested name → device
	gw4, gw6 := defaultGateways(req.Routes)
	routed := map[string]bool{} // default gateways set as a service's router
	for _, in := range req.Interfaces {
		dev, ok := byMAC[strings.ToLower(in.Mac)]
		if !ok && in.PreviousMac != "" {
			// A VM restored from a saved state keeps the MAC it was saved
			// with; macOS takes a new one with ifconfig ether.
			prev, found := byMAC[strings.ToLower(in.PreviousMac)]
			if !found {
				return nil, fmt.Errorf("no interface has MAC %s or %s", in.Mac, in.PreviousMac)
			}
			// The new MAC becomes an ifconfig argument.
			if hw, err := net.ParseMAC(in.Mac); err != nil || len(hw) != 6 {
				return nil, fmt.Errorf("interface MAC %q is not a 48-bit MAC address", in.Mac)
			}
			dev, ok = prev, true
			cmds = append(cmds, netCommand{tool: "ifconfig", args: []string{dev, "ether", strings.ToLower(in.Mac)}})
		}
		if !ok {
			return nil, fmt.Errorf("no interface has MAC %s", in.Mac)
		}
		if in.Name != "" {
			names[in.Name] = dev
		}
		if in.Mtu != 0 {
			cmds = append(cmds, netCommand{tool: "ifconfig", args: []string{dev, "mtu", strconv.Itoa(int(in.Mtu))}})
		}
		if len(in.Addresses) == 0 {
			continue
		}
		svc, hasSvc := serviceFor(svcs, dev)
		var have4, have6 bool
		for _, a := range in.Addresses {
			p, err := netip.ParsePrefix(a)
			if err != nil {
				return nil, fmt.Errorf("address %q: %v", a, err)
			}
			switch {
			case p.Addr().Is4() && !have4 && gw4 != "" && hasSvc:
				have4 = true
				cmds = append(cmds, netCommand{tool: "networksetup", args: []string{"-setmanual", svc.Name, p.Addr().String(), prefixMask(p), gw4}})
			case p.Addr().Is6() && !have6 && gw6 != "" && hasSvc:
				have6 = true
				cmds = append(cmds, netCommand{tool: "networksetup", args: []string{"-setv6manual", svc.Name, p.Addr().String(), strconv.Itoa(p.Bits()), gw6}})
			case p.Addr().Is4():
				// No router or no service: the address alone, until reboot.
				cmds = append(cmds, netCommand{tool: "ifconfig", args: []string{dev, "inet", p.Addr().String(), "netmask", prefixMask(p), "alias"}, exists: "File exists"})
			default:
				cmds = append(cmds, netCommand{tool: "ifconfig", args: []string{dev, "inet6", p.String(), "alias"}, exists: "File exists"})
			}
		}
		if have4 {
			routed[gw4] = true
		}
		if have6 {
			routed[gw6] = true
		}
	}
	for _, r := range req.Routes {
		if isDefault(r.Destination) && routed[r.Gateway] {
			continue // the router of the service's manual configuration
		}
		args := []string{"-n", "add"}
		dst := r.Destination
		if isDefault(dst) {
			dst = "default"
		}
		gw, err := netip.ParseAddr(r.Gateway)
		if r.Gateway != "" && err != nil {
			return nil, fmt.Errorf("route gateway %q: %v", r.Gateway, err)
		}
		if (r.Gateway != "" && gw.Is6()) || strings.Contains(r.Destination, ":") {
			args = append(args, "-inet6")
		}
		if dst == "default" {
			args = append(args, "default")
		} else {
			p, err := netip.ParsePrefix(dst)
			if err != nil {
				return nil, fmt.Errorf("route destination %q: %v", dst, err)
			}
			args = append(args, "-net", p.Masked().String())
		}
		switch {
		case r.Gateway != "":
			args = append(args, r.Gateway)
		case r.Device != "":
			dev := r.Device
			if d, ok := names[dev]; ok {
				dev = d
			}
			if strings.HasPrefix(dev, "-") {
				return nil, fmt.Errorf("route device %q", dev)
			}
			args = append(args, "-interface", dev)
		default:
			return nil, fmt.Errorf("route to %s has neither a gateway nor a device", dst)
		}
		cmds = append(cmds, netCommand{tool: "route", args: args, exists: "File exists"})
	}
	for _, c := range cmds {
		if err := checkArgv(c.tool, c.args); err != nil {
			return nil, err
		}
	}
	return cmds, nil
}

func isDefault(dst string) bool {
	return dst == "" || dst == "0.0.0.0/0" || dst == "::/0"
}

// defaultGateways are the gateways of the request's default routes.
func defaultGateways(rs []*api.Route) (v4, v6 string) {
	for _, r := range rs {
		if !isDefault(r.Destination) || r.Gateway == "" {
			continue
		}
		a, err := netip.ParseAddr(r.Gateway)
		switch {
		case err != nil:
		case a.Is4() && v4 == "":
			v4 = a.String()
		case a.Is6() && v6 == "":
			v6 = a.String()
		}
	}
	return v4, v6
}

// prefixMask is an IPv4 prefix's netmask in dotted form.
func prefixMask(p netip.Prefix) string {
	return net.IP(net.CIDRMask(p.Bits(), 32)).String()
}

// vmStat is `vm_stat`'s output: its page size and page counts by label.
type vmStat struct {
	pageSize uint64
	pages    map[string]uint64
}

// parseVMStat reads `vm_stat`:
//
//	Mach Virtual Memory Statistics: (page size of 16384 bytes)
//	Pages free:                               12345.
func parseVMStat(out string) (vmStat, error) {
	v := vmStat{pages: map[string]uint64{}}
	sc := bufio.NewScanner(strings.NewReader(out))
	for sc.Scan() {
		l := sc.Text()
		if i := strings.Index(l, "page size of "); i >= 0 {
			f := strings.Fields(l[i+len("page size of "):])
			if len(f) > 0 {
				v.pageSize, _ = strconv.ParseUint(f[0], 10, 64)
			}
			continue
		}
		k, val, ok := strings.Cut(l, ":")
		if !ok {
			continue
		}
		n, err := strconv.ParseUint(strings.TrimSuffix(strings.TrimSpace(val), "."), 10, 64)
		if err != nil {
			continue
		}
		v.pages[strings.Trim(strings.TrimSpace(k), `"`)] = n
	}
	if v.pageSize == 0 || len(v.pages) == 0 {
		return v, fmt.Errorf("vm_stat output without page size or counts")
	}
	return v, nil
}

func (v vmStat) bytes(label string) uint64 { return v.pages[label] * v.pageSize }

// memoryStats maps vm_stat onto the agent's memory numbers, as Activity
// Monitor counts them: free is free + speculative pages, available adds
// inactive and purgeable ones (reclaimable without paging out), the
// working set is what cannot be dropped: wired, active and compressed.
func memoryStats(total uint64, v vmStat) *api.MemoryStats {
	free := v.bytes("Pages free") + v.bytes("Pages speculative")
	avail := free + v.bytes("Pages inactive") + v.bytes("Pages purgeable")
	m := &api.MemoryStats{
		TotalBytes:      total,
		AvailableBytes:  min(avail, total),
		UsageBytes:      total - min(free, total),
		WorkingSetBytes: v.bytes("Pages wired down") + v.bytes("Pages active") + v.bytes("Pages occupied by compressor"),
		RssBytes:        v.bytes("Anonymous pages"),
	}
	m.WorkingSetBytes = min(m.WorkingSetBytes, m.UsageBytes)
	return m
}

// psProc is a line of `ps -A -o pid=,ppid=,rss=,time=,utime=` (user
// time, the fifth column, may be missing: 0).
type psProc struct {
	pid, ppid int
	rssBytes  uint64
	cpu, user time.Duration
}

func parsePS(out string) []psProc {
	var ps []psProc
	sc := bufio.NewScanner(strings.NewReader(out))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) != 4 && len(f) != 5 {
			continue
		}
		pid, err1 := strconv.Atoi(f[0])
		ppid, err2 := strconv.Atoi(f[1])
		rss, err3 := strconv.ParseUint(f[2], 10, 64)
		cpu, err4 := parseCPUTime(f[3])
		if err1 != nil || err2 != nil || err3 != nil || err4 != nil {
			continue
		}
		p := psProc{pid: pid, ppid: ppid, rssBytes: rss << 10, cpu: cpu}
		if len(f) == 5 {
			if u, err := parseCPUTime(f[4]); err == nil {
				p.user = min(u, cpu)
			}
		}
		ps = append(ps, p)
	}
	return ps
}

// userOnly is ps with each process's user time as its CPU time, for a
// second cpuTotal that sums the guest's user time.
func userOnly(ps []psProc) []psProc {
	out := make([]psProc, len(ps))
	for i, p := range ps {
		p.cpu = p.user
		out[i] = p
	}
	return out
}

// parseNetstat reads `netstat -ibn`: each interface's link-level row
// (its Network column "<Link#n>") with its packet, error and byte
// counters, the loopback left out, a down interface's "*" dropped from
// its name. The counters are the last seven columns (Ipkts Ierrs Ibytes
// Opkts Oerrs Obytes Coll), the address column being empty on some
// interfaces; a header that does not end so gives nothing.
func parseNetstat(out string) []*api.NetworkStats {
	lines := strings.Split(out, "\n")
	if len(lines) == 0 {
		return nil
	}
	want := []string{"Ipkts", "Ierrs", "Ibytes", "Opkts", "Oerrs", "Obytes", "Coll"}
	h := strings.Fields(lines[0])
	if len(h) < len(want)+1 || h[0] != "Name" || !slices.Equal(h[len(h)-len(want):], want) {
		return nil
	}
	var res []*api.NetworkStats
	seen := map[string]bool{}
	for _, l := range lines[1:] {
		f := strings.Fields(l)
		if len(f) < 3+len(want) || !strings.HasPrefix(f[2], "<Link#") {
			continue
		}
		name := strings.TrimSuffix(f[0], "*")
		if name == "" || name == "lo0" || seen[name] {
			continue
		}
		n := make([]uint64, len(want))
		ok := true
		for i, v := range f[len(f)-len(want):] {
			var err error
			if n[i], err = strconv.ParseUint(v, 10, 64); err != nil {
				ok = false
			}
		}
		if !ok {
			continue
		}
		seen[name] = true
		res = append(res, &api.NetworkStats{Name: name, RxPackets: n[0], RxErrors: n[1], RxBytes: n[2], TxPackets: n[3], TxErrors: n[4], TxBytes: n[5]})
	}
	return res
}

// maxCPUTimeField bounds each field of a ps time (days, hours,
// minutes, seconds) so that their sum cannot overflow a Duration.
const maxCPUTimeField = 1 << 20

// parseCPUTime reads ps's time: [days-][[hours:]minutes:]seconds[.frac],
// minutes being allowed past 59 ("123:45.67").
func parseCPUTime(s string) (time.Duration, error) {
	var d time.Duration
	if days, rest, ok := strings.Cut(s, "-"); ok {
		n, err := strconv.Atoi(days)
		if err != nil || n < 0 || n > maxCPUTimeField {
			return 0, fmt.Errorf("cpu time %q", s)
		}
		d, s = time.Duration(n)*24*time.Hour, rest
	}
	parts := strings.Split(s, ":")
	if len(parts) > 3 {
		return 0, fmt.Errorf("cpu time %q", s)
	}
	sec, err := strconv.ParseFloat(parts[len(parts)-1], 64)
	if err != nil || !(sec >= 0 && sec <= maxCPUTimeField) {
		return 0, fmt.Errorf("cpu time %q", s)
	}
	d += time.Duration(sec * float64(time.Second))
	unit := time.Minute
	for i := len(parts) - 2; i >= 0; i-- {
		n, err := strconv.Atoi(parts[i])
		if err != nil || n < 0 || n > maxCPUTimeField {
			return 0, fmt.Errorf("cpu time %q", s)
		}
		d += time.Duration(n) * unit
		unit *= 60
	}
	return d, nil
}

// cpuTotal keeps a cumulative CPU time for the whole guest from samples
// of its live processes: the time of a process that went away between
// two samples stays counted (as of its last sample), so the total never
// goes back, which the kubelet's rate computation needs.
type cpuTotal struct {
	last map[int]time.Duration
	gone time.Duration
}

func (c *cpuTotal) sample(ps []psProc) time.Duration {
	cur := make(map[int]time.Duration, len(ps))
	var live time.Duration
	for _, p := range ps {
		t := p.cpu
		if prev, ok := c.last[p.pid]; ok && prev > t {
			// A pid reused by a younger process: the older one's time
			// is gone with it.
			c.gone += prev
		}
		cur[p.pid] = t
		live += t
	}
	for pid, t := range c.last {
		if _, ok := cur[pid]; !ok {
			c.gone += t
		}
	}
	c.last = cur
	return c.gone + live
}

// treeStats sums CPU time and RSS of each root's process tree: roots
// maps a container's processes' pids to its ID.
func treeStats(ps []psProc, roots map[int]string) map[string]*api.ContainerStats {
	children := map[int][]psProc{}
	byPid := map[int]psProc{}
	for _, p := range ps {
		children[p.ppid] = append(children[p.ppid], p)
		byPid[p.pid] = p
	}
	out := map[string]*api.ContainerStats{}
	seen := map[int]bool{}
	for pid, id := range roots {
		cs := out[id]
		if cs == nil {
			cs = &api.ContainerStats{ContainerId: id}
			out[id] = cs
		}
		p, ok := byPid[pid]
		if !ok {
			continue
		}
		stack := []psProc{p}
		for len(stack) > 0 {
			q := stack[len(stack)-1]
			stack = stack[:len(stack)-1]
			if seen[q.pid] {
				continue
			}
			seen[q.pid] = true
			cs.CpuUsageCoreNanoseconds += uint64(q.cpu)
			cs.MemoryRssBytes += q.rssBytes
			cs.Processes++
			stack = append(stack, children[q.pid]...)
		}
	}
	return out
}

// sysctlName turns a pod's sysctl name into sysctl(8)'s dotted form and
// checks it cannot smuggle anything into the command line.
func sysctlName(n string) (string, error) {
	n = strings.ReplaceAll(n, "/", ".")
	if n == "" || strings.HasPrefix(n, ".") || strings.HasSuffix(n, ".") || strings.HasPrefix(n, "-") {
		return "", fmt.Errorf("invalid sysctl name %q", n)
	}
	for _, r := range n {
		if !(r == '.' || r == '_' || r == '-' || r >= '0' && r <= '9' || r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z') {
			return "", fmt.Errorf("invalid sysctl name %q", n)
		}
	}
	return n, nil
}

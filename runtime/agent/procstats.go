package agent

import (
	"bufio"
	"strconv"
	"strings"

	api "github.com/macvz/macvz/runtime/agentapi"
)

// Parsers of the Linux files the agent's Stats reads (/proc and cgroup
// v2), kept free of the files themselves so they are tested with
// captured contents. Every value comes from a guest the pod's author
// controls, as does the agent: they are measurements, never trusted for
// anything but being reported.

// keyValues parses lines of `key value` (memory.stat, cpu.stat,
// memory.events, /proc/vmstat); a line that is not two fields with a
// number is skipped.
func keyValues(text string) map[string]uint64 {
	m := map[string]uint64{}
	for _, l := range strings.Split(text, "\n") {
		f := strings.Fields(l)
		if len(f) != 2 {
			continue
		}
		if n, err := strconv.ParseUint(f[1], 10, 64); err == nil {
			m[f[0]] = n
		}
	}
	return m
}

// cpuTimes splits /proc/stat's aggregate cpu line's fields (user nice
// system idle iowait irq softirq steal ...) into user and system time in
// USER_HZ ticks.
func cpuTimes(f []string) (user, system uint64) {
	at := func(i int) uint64 {
		if i >= len(f) {
			return 0
		}
		n, _ := strconv.ParseUint(f[i], 10, 64)
		return n
	}
	return at(0) + at(1), at(2) + at(5) + at(6)
}

// memoryExtras fills the page cache, mapped, kernel and swap figures of
// m from /proc/meminfo (in bytes) and the fault and OOM counters from
// /proc/vmstat.
func memoryExtras(m *api.MemoryStats, meminfo, vmstat map[string]uint64) {
	m.CacheBytes = meminfo["Cached"]
	m.MappedFileBytes = meminfo["Mapped"]
	m.KernelBytes = meminfo["Slab"] + meminfo["KernelStack"] + meminfo["PageTables"]
	if t, f := meminfo["SwapTotal"], meminfo["SwapFree"]; t > f {
		m.SwapBytes = t - f
	}
	m.PageFaults = vmstat["pgfault"]
	m.MajorPageFaults = vmstat["pgmajfault"]
	m.OomKills = vmstat["oom_kill"]
}

// netDev parses /proc/net/dev: the interfaces but the loopback, in the
// file's order.
func netDev(text string) []*api.NetworkStats {
	var out []*api.NetworkStats
	for _, l := range strings.Split(text, "\n") {
		name, rest, ok := strings.Cut(l, ":")
		name = strings.TrimSpace(name)
		if !ok || name == "" || name == "lo" || strings.Contains(name, "|") {
			continue
		}
		f := strings.Fields(rest)
		if len(f) < 16 {
			continue
		}
		n := make([]uint64, 16)
		for i := range n {
			n[i], _ = strconv.ParseUint(f[i], 10, 64)
		}
		out = append(out, &api.NetworkStats{
			Name:    name,
			RxBytes: n[0], RxPackets: n[1], RxErrors: n[2], RxDropped: n[3],
			TxBytes: n[8], TxPackets: n[9], TxErrors: n[10], TxDropped: n[11],
		})
	}
	return out
}

// diskStats parses /proc/diskstats: the devices isDisk accepts (whole
// disks), sectors counted as 512 bytes whatever the device's block size,
// as the kernel does in this file.
func diskStats(text string, isDisk func(name string) bool) []*api.DiskStats {
	var out []*api.DiskStats
	for _, l := range strings.Split(text, "\n") {
		f := strings.Fields(l)
		if len(f) < 10 || !isDisk(f[2]) {
			continue
		}
		num := func(i int) uint64 { n, _ := strconv.ParseUint(f[i], 10, 64); return n }
		out = append(out, &api.DiskStats{
			Device: f[2], Major: uint32(num(0)), Minor: uint32(num(1)),
			Reads: num(3), ReadBytes: num(5) * 512, Writes: num(7), WriteBytes: num(9) * 512,
		})
	}
	return out
}

// loadavgThreads is the number of scheduling entities (threads) in
// /proc/loadavg's fourth field, `running/total`.
func loadavgThreads(text string) uint64 {
	f := strings.Fields(text)
	if len(f) < 4 {
		return 0
	}
	_, total, _ := strings.Cut(f[3], "/")
	n, _ := strconv.ParseUint(total, 10, 64)
	return n
}

// sockstatUsed is `sockets: used N` of /proc/net/sockstat.
func sockstatUsed(text string) uint64 {
	s := bufio.NewScanner(strings.NewReader(text))
	for s.Scan() {
		f := strings.Fields(s.Text())
		if len(f) >= 3 && f[0] == "sockets:" && f[1] == "used" {
			n, _ := strconv.ParseUint(f[2], 10, 64)
			return n
		}
	}
	return 0
}

// firstNumber is the first field of a file such as fs.file-nr or
// memory.current; "max" and garbage are 0.
func firstNumber(text string) uint64 {
	f := strings.Fields(text)
	if len(f) == 0 {
		return 0
	}
	n, _ := strconv.ParseUint(f[0], 10, 64)
	return n
}

// cgroupStats turns a container cgroup's files (by name, those that
// could be read) into its counters.
func cgroupStats(files map[string]string) *api.CgroupStats {
	c := &api.CgroupStats{}
	if stat, ok := files["memory.stat"]; ok {
		c.Memory = true
		ms := keyValues(stat)
		ev := keyValues(files["memory.events"])
		c.MemoryUsageBytes = firstNumber(files["memory.current"])
		c.MemoryPeakBytes = firstNumber(files["memory.peak"])
		c.CacheBytes, c.RssBytes, c.MappedFileBytes, c.KernelBytes = ms["file"], ms["anon"], ms["file_mapped"], ms["kernel"]
		c.SwapBytes = firstNumber(files["memory.swap.current"])
		c.MemoryLimitHits, c.OomKills = ev["max"], ev["oom_kill"]
		c.PageFaults, c.MajorPageFaults = ms["pgfault"], ms["pgmajfault"]
	}
	if stat, ok := files["cpu.stat"]; ok {
		cs := keyValues(stat)
		if _, ok := cs["nr_periods"]; ok {
			c.Cpu = true
			c.CfsPeriods, c.CfsThrottledPeriods = cs["nr_periods"], cs["nr_throttled"]
			c.CfsThrottledNanoseconds = cs["throttled_usec"] * 1000
		}
	}
	return c
}

// cgroupFiles are the files cgroupStats reads.
var cgroupFiles = []string{"memory.stat", "memory.events", "memory.current", "memory.peak", "memory.swap.current", "cpu.stat"}

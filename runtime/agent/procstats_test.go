package agent

import (
	"testing"

	api "github.com/macvz/macvz/runtime/agentapi"
)

func TestProcStatsParsers(t *testing.T) {
	// /proc/stat's cpu line: user nice system idle iowait irq softirq steal.
	if u, s := cpuTimes([]string{"100", "5", "40", "900", "7", "2", "3", "0"}); u != 105 || s != 45 {
		t.Errorf("cpuTimes: user %d system %d, want 105 45", u, s)
	}
	if u, s := cpuTimes([]string{"1"}); u != 1 || s != 0 {
		t.Errorf("cpuTimes of a short line: %d %d", u, s)
	}

	var m api.MemoryStats
	memoryExtras(&m, map[string]uint64{"Cached": 100, "Mapped": 30, "Slab": 10, "KernelStack": 4, "PageTables": 6, "SwapTotal": 50, "SwapFree": 20},
		keyValues("pgfault 5000\npgmajfault 40\noom_kill 2\nnr_free_pages 12\nbogus\nbad x\n"))
	if m.CacheBytes != 100 || m.MappedFileBytes != 30 || m.KernelBytes != 20 || m.SwapBytes != 30 || m.PageFaults != 5000 || m.MajorPageFaults != 40 || m.OomKills != 2 {
		t.Errorf("memoryExtras: %+v", &m)
	}

	const netdev = `Inter-|   Receive                                                |  Transmit
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed
    lo:    1234      10    0    0    0     0          0         0     1234      10    0    0    0     0       0          0
  eth0: 9000000    7000    1    2    0     0          0         0   500000    4000    3    4    0     0       0          0
 short: 1 2 3
`
	n := netDev(netdev)
	if len(n) != 1 || n[0].Name != "eth0" || n[0].RxBytes != 9000000 || n[0].RxPackets != 7000 || n[0].RxErrors != 1 || n[0].RxDropped != 2 ||
		n[0].TxBytes != 500000 || n[0].TxPackets != 4000 || n[0].TxErrors != 3 || n[0].TxDropped != 4 {
		t.Errorf("netDev: %v", n)
	}

	const diskstats = ` 254       0 vda 120 0 2400 50 30 0 800 20 0 60 70 0 0 0 0 0 0
 254       1 vda1 100 0 2000 40 30 0 800 20 0 50 60 0 0 0 0 0 0
   7       0 loop0 5 0 10 0 0 0 0 0 0 0 0 0 0 0 0 0 0
`
	d := diskStats(diskstats, func(name string) bool { return name == "vda" })
	if len(d) != 1 || d[0].Device != "vda" || d[0].Major != 254 || d[0].Minor != 0 || d[0].Reads != 120 || d[0].ReadBytes != 2400*512 || d[0].Writes != 30 || d[0].WriteBytes != 800*512 {
		t.Errorf("diskStats: %v", d)
	}

	if n := loadavgThreads("0.10 0.20 0.30 2/187 4242\n"); n != 187 {
		t.Errorf("loadavgThreads: %d", n)
	}
	if n := loadavgThreads("garbage"); n != 0 {
		t.Errorf("loadavgThreads of garbage: %d", n)
	}
	if n := sockstatUsed("sockets: used 17\nTCP: inuse 3 orphan 0 tw 0 alloc 4 mem 1\n"); n != 17 {
		t.Errorf("sockstatUsed: %d", n)
	}
	if n := firstNumber("352\t0\t9223372036854775807\n"); n != 352 {
		t.Errorf("firstNumber: %d", n)
	}
	if n := firstNumber("max\n"); n != 0 {
		t.Errorf("firstNumber(max): %d", n)
	}
}

func TestCgroupStats(t *testing.T) {
	c := cgroupStats(map[string]string{
		"memory.stat":         "anon 4096\nfile 8192\nkernel 1024\nfile_mapped 512\npgfault 90\npgmajfault 3\n",
		"memory.events":       "low 0\nhigh 0\nmax 7\noom 1\noom_kill 1\n",
		"memory.current":      "20480\n",
		"memory.peak":         "40960\n",
		"memory.swap.current": "0\n",
		"cpu.stat":            "usage_usec 1000\nuser_usec 600\nsystem_usec 400\nnr_periods 50\nnr_throttled 5\nthrottled_usec 2500000\n",
	})
	if !c.Memory || !c.Cpu || c.RssBytes != 4096 || c.CacheBytes != 8192 || c.KernelBytes != 1024 || c.MappedFileBytes != 512 || c.PageFaults != 90 ||
		c.MajorPageFaults != 3 || c.MemoryLimitHits != 7 || c.OomKills != 1 || c.MemoryUsageBytes != 20480 || c.MemoryPeakBytes != 40960 ||
		c.CfsPeriods != 50 || c.CfsThrottledPeriods != 5 || c.CfsThrottledNanoseconds != 2_500_000_000 {
		t.Errorf("cgroupStats: %+v", c)
	}
	// Without the cpu controller cpu.stat has no CFS counters.
	c = cgroupStats(map[string]string{"cpu.stat": "usage_usec 1000\nuser_usec 600\nsystem_usec 400\n"})
	if c.Memory || c.Cpu {
		t.Errorf("cgroupStats without controllers: %+v", c)
	}
}

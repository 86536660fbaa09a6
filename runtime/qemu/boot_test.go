package qemu

import (
	"bufio"
	"context"
	"crypto/sha256"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/macvz/macvz/integration/testutil"
	"github.com/macvz/macvz/runtime/vm"
)

// These tests boot real QEMU guests under TCG: testinit (testdata/testinit)
// as /init of an initramfs around the Debian kernel.

const bootTimeout = 2 * time.Minute // TCG on a busy CI machine

func requireQEMU(t testing.TB) {
	t.Helper()
	testutil.RequireTool(t, DefaultBinary, "qemu-system-x86")
}

func guestSpec(t testing.TB, dir string) *vm.Spec {
	t.Helper()
	kernel, initrd := testGuest(t)
	return &vm.Spec{
		ID:          filepath.Base(dir),
		Dir:         dir,
		CPUs:        1,
		MemoryBytes: 256 << 20,
		Boot:        vm.Boot{Kind: vm.BootLinux, Kernel: kernel, Initrd: initrd, Cmdline: "quiet"},
		ConsoleLog:  filepath.Join(dir, "console.log"),
		QEMU:        vm.QEMUOptions{Accel: AccelTCG},
	}
}

func startMachine(t testing.TB, ctx context.Context, spec *vm.Spec) vm.Machine {
	t.Helper()
	m, err := New().Create(ctx, spec)
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		m.Stop(context.Background(), 0)
		if t.Failed() {
			dumpLogs(t, spec)
		}
	})
	return m
}

func dumpLogs(t testing.TB, spec *vm.Spec) {
	for _, f := range []string{filepath.Join(spec.Dir, LogFile), spec.ConsoleLog} {
		b, _ := os.ReadFile(f)
		if len(b) > 4000 {
			b = b[len(b)-4000:]
		}
		t.Logf("--- %s:\n%s", f, b)
	}
}

// agentConn is a connection to testinit.
type agentConn struct {
	t testing.TB
	c net.Conn
	r *bufio.Reader
}

// dialAgent connects to the agent port.
func dialAgent(t testing.TB, ctx context.Context, m vm.Machine) *agentConn {
	t.Helper()
	c, err := m.DialAgent(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return &agentConn{t: t, c: c, r: bufio.NewReader(c)}
}

// pingAgent connects to the agent port and waits until testinit answers a
// ping, skipping its hellos.
//
// Why not wait for the hello a new connection gets: the guest learns of
// host connects and disconnects through virtio-serial control messages,
// and a disconnect the guest had not yet processed when the VM was saved,
// or a quick reconnect, leaves it blocked in read, never noticing a new
// connection. Only a host-initiated exchange is reliable (a lesson for
// any agent protocol over virtio-serial).
func pingAgent(t testing.TB, ctx context.Context, m vm.Machine) *agentConn {
	t.Helper()
	a := dialAgent(t, ctx, m)
	if _, err := a.c.Write([]byte("ping\n")); err != nil {
		t.Fatal(err)
	}
	for {
		switch got := a.line(bootTimeout); got {
		case "pong":
			return a
		case "hello":
		default:
			t.Fatalf("agent said %q, want pong", got)
		}
	}
}

func (a *agentConn) line(timeout time.Duration) string {
	a.t.Helper()
	a.c.SetReadDeadline(time.Now().Add(timeout))
	s, err := a.r.ReadString('\n')
	if err != nil {
		a.t.Fatalf("reading from the agent: %v (got %q)", err, s)
	}
	return strings.TrimSuffix(s, "\n")
}

func (a *agentConn) cmd(format string, args ...any) string {
	a.t.Helper()
	if _, err := fmt.Fprintf(a.c, format+"\n", args...); err != nil {
		a.t.Fatal(err)
	}
	return a.line(30 * time.Second)
}

func waitDone(t testing.TB, m vm.Machine, timeout time.Duration) vm.Exit {
	t.Helper()
	select {
	case <-m.Done():
	case <-time.After(timeout):
		t.Fatalf("machine still running after %s", timeout)
	}
	if m.State() != vm.StateStopped {
		t.Errorf("state %s after Done", m.State())
	}
	return m.Exit()
}

func processAlive(pid int) bool {
	if pid <= 0 {
		return false
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	// A zombie is gone for our purposes.
	i := strings.LastIndexByte(string(b), ')')
	return i < 0 || !strings.HasPrefix(string(b[i:]), ") Z")
}

func readPID(t testing.TB, dir string) int {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, PIDFile))
	if err != nil {
		t.Fatal(err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		t.Fatal(err)
	}
	return pid
}

// qemuProcesses lists QEMU processes whose command line mentions dir.
func qemuProcesses(dir string) []int {
	var pids []int
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, _ := os.ReadFile("/proc/" + e.Name() + "/cmdline")
		if strings.Contains(string(b), dir) && strings.Contains(string(b), "-nodefaults") && processAlive(pid) {
			pids = append(pids, pid)
		}
	}
	return pids
}

// TestBoot boots a guest with a disk, a share and a NIC, talks to it over
// the agent channel, and stops it with the power button.
func TestBoot(t *testing.T) {
	requireQEMU(t)
	ctx := context.Background()
	spec := guestSpec(t, t.TempDir())
	disk := filepath.Join(t.TempDir(), "disk.raw")
	if err := os.WriteFile(disk, make([]byte, 1<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	share := t.TempDir()
	if err := os.WriteFile(filepath.Join(share, "greeting"), []byte("hi from the host\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	spec.Disks = []vm.Disk{{Path: disk, ReadOnly: true}}
	spec.Shares = []vm.Share{{Tag: "host", HostPath: share, ReadOnly: true}}
	spec.NICs = []vm.NIC{{Kind: vm.NICUser, MAC: "02:42:ac:11:00:02"}}

	start := time.Now()
	m := startMachine(t, ctx, spec)
	if m.State() != vm.StateRunning {
		t.Fatalf("state %s after Start", m.State())
	}
	pid := readPID(t, spec.Dir)
	a := dialAgent(t, ctx, m)
	// Connected before the guest booted: the first thing it says is hello.
	if got := a.line(bootTimeout); got != "hello" {
		t.Fatalf("agent said %q, want hello", got)
	}
	t.Logf("cold boot to agent hello: %s", time.Since(start))
	if got := a.cmd("ping"); got != "pong" {
		t.Errorf("ping: %q", got)
	}
	if got := a.cmd("cat /sys/class/net/eth0/address"); got != "02:42:ac:11:00:02" {
		t.Errorf("eth0 MAC: %q", got)
	}
	if got := a.cmd("cat /sys/block/vda/size"); got != "2048" {
		t.Errorf("vda size: %q sectors", got)
	}
	if got := a.cmd("cat /sys/block/vda/ro"); got != "1" {
		t.Errorf("vda ro: %q", got)
	}
	if got := a.cmd("mount9p host /mnt"); got != "ok" {
		t.Fatalf("mount9p: %q", got)
	}
	if got := a.cmd("cat /mnt/greeting"); got != "hi from the host" {
		t.Errorf("9p read: %q", got)
	}
	// QEMU cannot migrate a mounted 9p share: Save fails, says why, and
	// leaves the guest running.
	state := filepath.Join(t.TempDir(), "vm.state")
	err := m.Save(ctx, state)
	t.Logf("Save with 9p mounted: %v", err)
	if err == nil || !strings.Contains(err.Error(), "mount_tag") {
		t.Errorf("Save with a mounted 9p share: %v", err)
	}
	if _, err := os.Stat(state); !os.IsNotExist(err) {
		t.Errorf("failed Save left %s: %v", state, err)
	}
	if _, err := os.Stat(state + ".tmp"); !os.IsNotExist(err) {
		t.Errorf("failed Save left %s.tmp: %v", state, err)
	}
	if got := a.cmd("ping"); got != "pong" {
		t.Errorf("ping after a failed Save: %q", got)
	}
	st, err := m.Stats(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if st.CPUNanos == 0 || st.MemoryBytes < 10<<20 {
		t.Errorf("stats %+v", st)
	}
	// The agent connection may stay open: Stop presses the power button.
	stopStart := time.Now()
	if err := m.Stop(ctx, time.Minute); err != nil {
		t.Fatal(err)
	}
	t.Logf("Stop with the power button: %s", time.Since(stopStart))
	e := waitDone(t, m, time.Second)
	if !e.Clean || e.Reason != "guest powered off" {
		t.Errorf("exit %+v", e)
	}
	if processAlive(pid) {
		t.Errorf("qemu %d still running", pid)
	}
	if _, err := os.Stat(filepath.Join(spec.Dir, PIDFile)); !os.IsNotExist(err) {
		t.Errorf("pid file: %v", err)
	}
	if err := m.Stop(ctx, time.Minute); err != nil {
		t.Errorf("second Stop: %v", err)
	}
	if _, err := m.DialAgent(ctx); err == nil {
		t.Error("DialAgent on a stopped machine")
	}
	con, _ := os.ReadFile(spec.ConsoleLog)
	if !strings.Contains(string(con), "testinit: agent port") {
		t.Errorf("console log lacks testinit's output:\n%s", con)
	}
}

// TestSaveRestore saves a booted guest and resumes it in a new QEMU, twice
// from the same file; the restored guest's reboot ends its VM.
func TestSaveRestore(t *testing.T) {
	requireQEMU(t)
	ctx := context.Background()
	spec := guestSpec(t, t.TempDir())
	m := startMachine(t, ctx, spec)
	a := pingAgent(t, ctx, m)
	a.c.Close()

	state := filepath.Join(t.TempDir(), "vm.state")
	saveStart := time.Now()
	if err := m.Save(ctx, state); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(state)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("Save: %s, %d MB", time.Since(saveStart), fi.Size()>>20)
	if _, err := os.Stat(state + ".tmp"); !os.IsNotExist(err) {
		t.Errorf("temporary file left: %v", err)
	}
	if err := m.Stop(ctx, time.Minute); err != nil {
		t.Fatal(err)
	}
	if e := waitDone(t, m, time.Second); !e.Clean {
		t.Errorf("exit after save: %+v", e)
	}

	for i, last := range []string{"poweroff", "reboot"} {
		rspec := guestSpec(t, t.TempDir())
		rspec.RestoreFrom = state
		start := time.Now()
		r := startMachine(t, ctx, rspec)
		ra := pingAgent(t, ctx, r)
		t.Logf("restore %d to agent answering: %s", i, time.Since(start))
		// One client at a time: a second connection works once the first
		// is closed.
		ra.c.Close()
		ra = pingAgent(t, ctx, r)
		if got := ra.cmd(last); got != "ok" {
			t.Errorf("%s: %q", last, got)
		}
		e := waitDone(t, r, time.Minute)
		want := map[string]string{"poweroff": "guest powered off", "reboot": "guest rebooted (a reboot ends the VM)"}[last]
		if !e.Clean || e.Reason != want {
			t.Errorf("exit %+v, want %q", e, want)
		}
	}
}

// TestSaveRestoreRAMFile: a savable guest (its RAM in a memfd) saves its
// RAM to a file of its own and a device state without it; two VMs
// restored from them map the file copy-on-write, find the guest's memory
// as it was (the boot_id it had made) and leave the file as it was. A
// later Save of the first VM (a checkpoint) is a whole stream again, which
// restores without the RAM file.
func TestSaveRestoreRAMFile(t *testing.T) {
	requireQEMU(t)
	ctx := context.Background()
	spec := guestSpec(t, t.TempDir())
	spec.Savable = true
	m := startMachine(t, ctx, spec)
	a := pingAgent(t, ctx, m)
	bootID := a.cmd("cat /proc/sys/kernel/random/boot_id")
	a.c.Close()

	dir := t.TempDir()
	state := filepath.Join(dir, "state")
	start := time.Now()
	if err := m.(vm.RAMFileSaver).SaveRAMFile(ctx, state); err != nil {
		t.Fatal(err)
	}
	ram := state + vm.RAMFileSuffix
	st, err1 := os.Stat(state)
	rf, err2 := os.Stat(ram)
	if err1 != nil || err2 != nil {
		t.Fatalf("state %v, RAM file %v", err1, err2)
	}
	data := rf.Sys().(*syscall.Stat_t).Blocks * 512
	t.Logf("SaveRAMFile: %s, state %d KB, RAM file %d MB (%d MB of data)", time.Since(start), st.Size()>>10, rf.Size()>>20, data>>20)
	if st.Size() > 4<<20 {
		t.Errorf("the state without the RAM is %d bytes", st.Size())
	}
	if rf.Size() != spec.MemoryBytes || data >= spec.MemoryBytes || data < 8<<20 {
		t.Errorf("RAM file: %d bytes, %d of them data; want %d, sparse", rf.Size(), data, spec.MemoryBytes)
	}
	left, _ := filepath.Glob(filepath.Join(dir, "*.tmp"))
	if len(left) > 0 {
		t.Errorf("temporary files left: %v", left)
	}
	sum := func() string {
		b, err := os.ReadFile(ram)
		if err != nil {
			t.Fatal(err)
		}
		return fmt.Sprintf("%x", sha256.Sum256(b))
	}
	before := sum()

	// A checkpoint of the same VM after it resumed: the RAM is in the
	// stream again.
	if err := m.Resume(ctx); err != nil {
		t.Fatal(err)
	}
	whole := filepath.Join(dir, "whole")
	if err := m.Save(ctx, whole); err != nil {
		t.Fatal(err)
	}
	wantRAMInStream(t, whole, "a Save after SaveRAMFile")
	if _, err := os.Stat(whole + vm.RAMFileSuffix); !os.IsNotExist(err) {
		t.Errorf("a Save wrote a RAM file: %v", err)
	}
	if err := m.Stop(ctx, time.Minute); err != nil {
		t.Fatal(err)
	}
	waitDone(t, m, time.Second)

	for i, from := range []struct{ state, ram string }{{state, ram}, {state, ram}, {whole, ""}} {
		rspec := guestSpec(t, t.TempDir())
		rspec.Savable = true
		rspec.RestoreFrom, rspec.RestoreRAM = from.state, from.ram
		start := time.Now()
		r := startMachine(t, ctx, rspec)
		ra := pingAgent(t, ctx, r)
		t.Logf("restore %d (RAM file %q) to agent answering: %s", i, from.ram, time.Since(start))
		if got := ra.cmd("cat /proc/sys/kernel/random/boot_id"); got != bootID {
			t.Errorf("restore %d: boot_id %q, want the saved guest's %q", i, got, bootID)
		}
		if i == 1 {
			// A checkpoint of a VM restored from the RAM file: its RAM
			// goes into the stream.
			ra.c.Close()
			cp := filepath.Join(dir, "checkpoint")
			if err := r.Save(ctx, cp); err != nil {
				t.Fatal(err)
			}
			wantRAMInStream(t, cp, "a Save of a VM restored from the RAM file")
			if err := r.Resume(ctx); err != nil {
				t.Fatal(err)
			}
			ra = pingAgent(t, ctx, r)
		}
		if got := ra.cmd("poweroff"); got != "ok" {
			t.Errorf("poweroff: %q", got)
		}
		if e := waitDone(t, r, time.Minute); !e.Clean {
			t.Errorf("exit %+v", e)
		}
	}
	if after := sum(); after != before {
		t.Error("the restored VMs changed the RAM file")
	}
}

// wantRAMInStream checks that the state Save wrote to path carries the
// guest's RAM (a few MB at least), as a checkpoint's must.
func wantRAMInStream(t *testing.T, path, what string) {
	t.Helper()
	if fi, err := os.Stat(path); err != nil {
		t.Error(err)
	} else if fi.Size() < 8<<20 {
		t.Errorf("%s: %d bytes; want the RAM in it", what, fi.Size())
	}
}

// TestHardStop stops a machine with no grace period, and sees a QEMU
// killed behind the Machine's back.
func TestHardStop(t *testing.T) {
	requireQEMU(t)
	ctx := context.Background()

	spec := guestSpec(t, t.TempDir())
	m := startMachine(t, ctx, spec)
	pid := readPID(t, spec.Dir)
	if err := m.Stop(ctx, 0); err != nil {
		t.Fatal(err)
	}
	e := waitDone(t, m, time.Second)
	if e.Clean || e.Reason != "stopped hard (no grace period)" {
		t.Errorf("exit %+v", e)
	}
	if processAlive(pid) {
		t.Errorf("qemu %d still running", pid)
	}

	spec = guestSpec(t, t.TempDir())
	m = startMachine(t, ctx, spec)
	pid = readPID(t, spec.Dir)
	syscall.Kill(pid, syscall.SIGKILL)
	e = waitDone(t, m, 10*time.Second)
	if e.Clean || e.Reason != "qemu killed by signal killed" {
		t.Errorf("exit %+v", e)
	}
	if err := m.Stop(ctx, time.Second); err != nil {
		t.Errorf("Stop after exit: %v", err)
	}
}

// TestStartBadKernel: QEMU refuses the kernel; Start says why and leaves
// no process behind.
func TestStartBadKernel(t *testing.T) {
	requireQEMU(t)
	spec := guestSpec(t, t.TempDir())
	bad := filepath.Join(t.TempDir(), "vmlinux")
	if err := os.WriteFile(bad, []byte(strings.Repeat("not a kernel\n", 1000)), 0o644); err != nil {
		t.Fatal(err)
	}
	spec.Boot.Kernel = bad
	spec.Boot.Initrd = ""
	m, err := New().Create(context.Background(), spec)
	if err != nil {
		t.Fatal(err)
	}
	err = m.Start(context.Background())
	if err == nil {
		m.Stop(context.Background(), 0)
		t.Fatal("Start succeeded")
	}
	t.Logf("Start: %v", err)
	if !strings.Contains(err.Error(), "qemu exited with status 1: qemu: invalid kernel header") {
		t.Errorf("Start error %q lacks QEMU's message", err)
	}
	e := waitDone(t, m, time.Second)
	if e.Clean || !strings.Contains(e.Reason, "invalid kernel header") {
		t.Errorf("exit %+v", e)
	}
	if pids := qemuProcesses(spec.Dir); len(pids) != 0 {
		t.Errorf("qemu processes left: %v", pids)
	}
}

// TestRestoreBadState: QEMU cannot load the state file; Start says why.
func TestRestoreBadState(t *testing.T) {
	requireQEMU(t)
	spec := guestSpec(t, t.TempDir())
	spec.RestoreFrom = filepath.Join(t.TempDir(), "vm.state")
	if err := os.WriteFile(spec.RestoreFrom, []byte("QEVM garbage"), 0o644); err != nil {
		t.Fatal(err)
	}
	m, err := New().Create(context.Background(), spec)
	if err != nil {
		t.Fatal(err)
	}
	err = m.Start(context.Background())
	if err == nil {
		m.Stop(context.Background(), 0)
		t.Fatal("Start succeeded")
	}
	t.Logf("Start: %v", err)
	if !strings.Contains(err.Error(), "qemu exited with status 1: qemu-system-x86_64: load of migration failed") {
		t.Errorf("Start error %q lacks QEMU's message", err)
	}
	waitDone(t, m, time.Second)
	if pids := qemuProcesses(spec.Dir); len(pids) != 0 {
		t.Errorf("qemu processes left: %v", pids)
	}
}

// TestParentDeath: QEMU dies with the process that owns its Machine.
func TestParentDeath(t *testing.T) {
	if os.Getenv("QEMU_TEST_PARENT") != "" {
		// The helper: start a machine, print QEMU's pid, and exit without
		// stopping it.
		spec := guestSpec(t, os.Getenv("QEMU_TEST_PARENT"))
		m, err := New().Create(context.Background(), spec)
		if err != nil {
			t.Fatal(err)
		}
		if err := m.Start(context.Background()); err != nil {
			t.Fatal(err)
		}
		fmt.Printf("pid=%d\n", readPID(t, spec.Dir))
		os.Exit(0)
	}
	requireQEMU(t)
	kernel, initrd := testGuest(t)
	dir := t.TempDir()
	cmd := exec.Command(os.Args[0], "-test.run=^TestParentDeath$")
	cmd.Env = append(os.Environ(), "QEMU_TEST_PARENT="+dir, envKernel+"="+kernel, envInitrd+"="+initrd)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("helper: %v\n%s", err, out)
	}
	var pid int
	for _, l := range strings.Split(string(out), "\n") {
		if p, ok := strings.CutPrefix(l, "pid="); ok {
			pid, _ = strconv.Atoi(p)
		}
	}
	if pid == 0 {
		t.Fatalf("helper printed no pid:\n%s", out)
	}
	deadline := time.Now().Add(10 * time.Second)
	for processAlive(pid) {
		if time.Now().After(deadline) {
			syscall.Kill(pid, syscall.SIGKILL)
			t.Fatalf("qemu %d outlived its parent", pid)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// BenchmarkBoot is a cold boot until the agent answers, per machine type.
func BenchmarkBoot(b *testing.B) {
	requireQEMU(b)
	for _, machine := range []string{"q35", "pc"} {
		b.Run(machine, func(b *testing.B) {
			ctx := context.Background()
			var total time.Duration
			for i := 0; i < b.N; i++ {
				b.StopTimer()
				spec := guestSpec(b, b.TempDir())
				spec.QEMU.Machine = machine
				m, err := New().Create(ctx, spec)
				if err != nil {
					b.Fatal(err)
				}
				b.StartTimer()
				start := time.Now()
				if err := m.Start(ctx); err != nil {
					b.Fatal(err)
				}
				a := pingAgent(b, ctx, m)
				total += time.Since(start)
				b.StopTimer()
				a.c.Close()
				m.Stop(ctx, 0)
				b.StartTimer()
			}
			b.ReportMetric(float64(total.Milliseconds())/float64(b.N), "ms/op")
		})
	}
}

// BenchmarkRestore is a restore from a saved state until the agent
// answers.
func BenchmarkRestore(b *testing.B) {
	requireQEMU(b)
	ctx := context.Background()
	spec := guestSpec(b, b.TempDir())
	m := startMachine(b, ctx, spec)
	a := pingAgent(b, ctx, m)
	a.c.Close()
	state := filepath.Join(b.TempDir(), "vm.state")
	saveStart := time.Now()
	if err := m.Save(ctx, state); err != nil {
		b.Fatal(err)
	}
	b.Logf("save: %s", time.Since(saveStart))
	m.Stop(ctx, 0)

	b.ResetTimer()
	var total time.Duration
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		rspec := guestSpec(b, b.TempDir())
		rspec.RestoreFrom = state
		r, err := New().Create(ctx, rspec)
		if err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
		start := time.Now()
		if err := r.Start(ctx); err != nil {
			b.Fatal(err)
		}
		ra := pingAgent(b, ctx, r)
		total += time.Since(start)
		b.StopTimer()
		ra.c.Close()
		r.Stop(ctx, 0)
		b.StartTimer()
	}
	b.ReportMetric(float64(total.Milliseconds())/float64(b.N), "ms/op")
}

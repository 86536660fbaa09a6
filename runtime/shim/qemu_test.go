//go:build linux

package shim

import (
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/macvz/macvz/integration/guest"
	"github.com/macvz/macvz/integration/testutil"
	"github.com/macvz/macvz/runtime/agentapi"
	"github.com/macvz/macvz/runtime/qemu"
	"github.com/macvz/macvz/runtime/shimapi"
	"github.com/macvz/macvz/runtime/vm"
)

// TestQEMU runs the real thing: the `macvz shim` command of the real
// macvz binary, the qemu backend under TCG, and the test guest of
// integration/guest (Debian kernel, initramfs whose /init is
// macvz-agent), reached over virtio-serial with the link framing.
func TestQEMU(t *testing.T) {
	if testing.Short() {
		t.Skip("boots a VM")
	}
	testutil.RequireTool(t, qemu.DefaultBinary, "qemu-system-x86")
	ctx := ctxT(t, 10*time.Minute)
	work := t.TempDir()

	// The guest: a static agent as /init, busybox, the kernel's modules.
	initBin := filepath.Join(work, "init")
	build := exec.CommandContext(ctx, "go", "build", "-o", initBin, "github.com/macvz/macvz/cmd/macvz-agent")
	build.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH=amd64")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("building the agent: %v\n%s", err, out)
	}
	cache := &guest.Cache{Dir: guest.DefaultCacheDir()}
	kernel, err := cache.Kernel(ctx, "")
	if err != nil {
		testutil.Unavailable(t, "no guest kernel: %v", err)
	}
	busybox, err := cache.Busybox(ctx)
	if err != nil {
		testutil.Unavailable(t, "no busybox: %v", err)
	}
	initrd := filepath.Join(work, "initrd")
	f, err := os.Create(initrd)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := guest.WriteInitramfs(f, guest.InitramfsOptions{Init: initBin, Kernel: kernel, Busybox: busybox}); err != nil {
		t.Fatal(err)
	}
	f.Close()

	// The real command.
	macvz := filepath.Join(work, "macvz")
	if out, err := exec.CommandContext(ctx, "go", "build", "-o", macvz, "github.com/macvz/macvz/cmd/macvz").CombinedOutput(); err != nil {
		t.Fatalf("building macvz: %v\n%s", err, out)
	}

	dir := sandboxDir(t)
	spec := &vm.Spec{
		ID:          "qemu-sb",
		CPUs:        1,
		MemoryBytes: 256 << 20,
		Boot:        vm.Boot{Kind: vm.BootLinux, Kernel: kernel.Vmlinux, Initrd: initrd, Cmdline: "quiet"},
		ConsoleLog:  filepath.Join(dir, "console.log"),
		QEMU:        vm.QEMUOptions{Accel: qemu.AccelTCG},
	}
	c, err := Spawn(ctx, SpawnOptions{Binary: macvz, Dir: dir, Backend: "qemu", Spec: spec, LogLevel: "debug"})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	sr, err := c.Start(ctx, 3*time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("boot to an answering agent: %s (VM start %s), kernel %s", time.Duration(sr.BootNs), time.Duration(sr.VmStartNs), sr.Agent.KernelRelease)
	if !sr.Agent.Pid1 || sr.Agent.Os != "linux" {
		t.Errorf("agent info: %v", sr.Agent)
	}
	qemuPid, err := readPID(filepath.Join(dir, qemu.PIDFile))
	if err != nil {
		t.Fatal(err)
	}

	a := c.Agent()
	if _, err := a.SetHostname(ctx, &agentapi.SetHostnameRequest{Hostname: "qemu-pod"}); err != nil {
		t.Fatal(err)
	}
	env := []string{"PATH=/bin"}
	logPath := filepath.Join(t.TempDir(), "ctr.log")
	id := pid("ctr", "")
	if _, err := a.CreateProcess(ctx, &agentapi.CreateProcessRequest{Id: id, Argv: []string{"sh", "-c", "echo a; echo b >&2; hostname; exit 3"}, Env: env}); err != nil {
		t.Fatal(err)
	}
	watch(t, c, id, logPath)
	start(t, c, id)
	if ex := waitExit(t, c, id); ex.ExitCode != 3 || ex.Reason != ReasonError {
		t.Errorf("exit: %v", ex)
	}
	es := readCRILog(t, logPath)
	if got := streamText(es, "stdout"); got != "a\nqemu-pod\n" {
		t.Errorf("stdout in the log: %q", got)
	}
	if got := streamText(es, "stderr"); got != "b\n" {
		t.Errorf("stderr in the log: %q", got)
	}

	// A stream straight from the agent, through the shim.
	eid := pid("ctr", "uname")
	if _, err := a.CreateProcess(ctx, &agentapi.CreateProcessRequest{Id: eid, Argv: []string{"uname", "-r"}, Env: env}); err != nil {
		t.Fatal(err)
	}
	start(t, c, eid)
	r, err := agentapi.OpenOutput(ctx, a, eid, agentapi.Stdio_STDOUT, 0)
	if err != nil {
		t.Fatal(err)
	}
	out, err := io.ReadAll(r)
	r.Close()
	if err != nil || strings.TrimSpace(string(out)) != kernel.Version {
		t.Errorf("uname -r: %q %v", out, err)
	}

	// Re-attach.
	c.Close()
	c, err = Connect(ctx, dir)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ps, err := c.Shim().ProcessStatus(ctx, &shimapi.ProcessStatusRequest{ContainerId: "ctr"})
	if err != nil || ps.Exit.GetExitCode() != 3 {
		t.Errorf("ProcessStatus after re-attaching: %v %v", ps, err)
	}
	if st, err := c.Shim().Stats(ctx, &shimapi.StatsRequest{}); err != nil || st.CpuNanos == 0 || st.MemoryBytes == 0 {
		t.Errorf("Stats: %v %v", st, err)
	}

	// A graceful stop: the agent powers the guest off.
	t0 := time.Now()
	exit, err := c.Stop(ctx, 20*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("stop: %s, %v", time.Since(t0), exit)
	if !exit.Clean || exit.Reason != "guest powered off" {
		t.Errorf("exit: %v", exit)
	}
	shimPid := c.Pid()
	if err := c.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	if processAlive(shimPid) || processAlive(qemuPid) {
		t.Errorf("shim (%d) or qemu (%d) still alive", shimPid, qemuPid)
	}
	if b, _ := os.ReadFile(filepath.Join(dir, LogFile)); !strings.Contains(string(b), "asked the agent to power off") {
		t.Error("the agent was not asked to power off")
	}
}

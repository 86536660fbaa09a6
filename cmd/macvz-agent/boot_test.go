//go:build linux

package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containerd/ttrpc"

	"github.com/macvz/macvz/integration/guest"
	"github.com/macvz/macvz/integration/testutil"
	api "github.com/macvz/macvz/runtime/agentapi"
)

// The boot tests run the agent as /init of the QEMU test guest
// (integration/guest: Debian kernel, busybox) under TCG and drive it over
// the virtio-serial port with the link framing, as the host will.

var bootGuest struct {
	once           sync.Once
	kernel, initrd string
	err            error
}

func TestMain(m *testing.M) {
	code := m.Run()
	if bootGuest.initrd != "" {
		os.RemoveAll(filepath.Dir(bootGuest.initrd))
	}
	os.Exit(code)
}

func buildBootGuest(t *testing.T) (kernel, initrd string) {
	testutil.RequireTool(t, "qemu-system-x86_64", "qemu-system-x86")
	g := &bootGuest
	g.once.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
		defer cancel()
		dir, err := os.MkdirTemp("", "agent-boot-")
		if err != nil {
			g.err = err
			return
		}
		init := filepath.Join(dir, "init")
		cmd := exec.CommandContext(ctx, "go", "build", "-o", init, ".")
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH=amd64")
		if out, err := cmd.CombinedOutput(); err != nil {
			g.err = fmt.Errorf("go build: %v\n%s", err, out)
			return
		}
		cache := &guest.Cache{Dir: guest.DefaultCacheDir()}
		k, err := cache.Kernel(ctx, "")
		if err != nil {
			g.err = err
			return
		}
		bb, err := cache.Busybox(ctx)
		if err != nil {
			g.err = err
			return
		}
		initrd := filepath.Join(dir, "initrd")
		f, err := os.Create(initrd)
		if err != nil {
			g.err = err
			return
		}
		if _, err := guest.WriteInitramfs(f, guest.InitramfsOptions{Init: init, Kernel: k, Busybox: bb}); err != nil {
			f.Close()
			g.err = err
			return
		}
		g.err = f.Close()
		g.kernel, g.initrd = k.Vmlinux, initrd
	})
	if g.err != nil {
		t.Fatalf("building the guest: %v", g.err)
	}
	return g.kernel, g.initrd
}

type bootedVM struct {
	dir     string
	share   string
	cmd     *exec.Cmd
	exited  chan struct{} // closed when QEMU has exited
	console string
}

const guestMAC = "52:54:00:12:34:56"

// bootVM boots the guest, its init (the agent) given initArgs.
func bootVM(t *testing.T, initArgs ...string) *bootedVM {
	kernel, initrd := buildBootGuest(t)
	cmdline := "console=ttyS0 panic=-1 quiet"
	if len(initArgs) > 0 {
		cmdline += " -- " + strings.Join(initArgs, " ")
	}
	// Short socket paths: sun_path has 108 bytes.
	dir, err := os.MkdirTemp("", "avm")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	share := filepath.Join(dir, "share")
	os.Mkdir(share, 0o755)
	vm := &bootedVM{dir: dir, share: share, exited: make(chan struct{}), console: filepath.Join(dir, "console.log")}
	vm.cmd = exec.Command("qemu-system-x86_64",
		"-M", "pc", "-accel", "tcg", "-m", "512", "-smp", "1",
		"-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
		"-kernel", kernel, "-initrd", initrd,
		"-append", cmdline,
		"-serial", "file:"+vm.console,
		"-device", "virtio-serial-pci,id=vser0",
		"-chardev", "socket,id=agent,path="+filepath.Join(dir, "agent.sock")+",server=on,wait=off",
		"-device", "virtserialport,bus=vser0.0,chardev=agent,name=agent",
		"-qmp", "unix:"+filepath.Join(dir, "qmp.sock")+",server=on,wait=off",
		"-netdev", "user,id=n0,restrict=on",
		"-device", "virtio-net-pci,netdev=n0,mac="+guestMAC,
		"-fsdev", "local,id=fs0,path="+share+",security_model=none",
		"-device", "virtio-9p-pci,fsdev=fs0,mount_tag=share0",
		"-device", "virtio-rng-pci",
	)
	vm.cmd.Stderr = os.Stderr
	if err := vm.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { vm.cmd.Wait(); close(vm.exited) }()
	t.Cleanup(func() {
		vm.cmd.Process.Kill()
		<-vm.exited
		if t.Failed() {
			b, _ := os.ReadFile(vm.console)
			t.Logf("console:\n%s", b)
		}
	})
	return vm
}

// connect dials the agent's port and starts a link session.
func (vm *bootedVM) connect(t *testing.T, timeout time.Duration) (api.AgentClient, func()) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	var c net.Conn
	var err error
	for {
		c, err = net.Dial("unix", filepath.Join(vm.dir, "agent.sock"))
		if err == nil {
			break
		}
		select {
		case <-ctx.Done():
			t.Fatalf("dialing the agent socket: %v", err)
		case <-time.After(10 * time.Millisecond):
		}
	}
	lc, err := api.LinkClient(ctx, c, 50*time.Millisecond)
	if err != nil {
		c.Close()
		t.Fatal(err)
	}
	tc := ttrpc.NewClient(lc)
	return api.NewAgentClient(tc), func() { tc.Close() }
}

func guestRun(t *testing.T, c api.AgentClient, id string, argv ...string) (string, int32) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	pid := &api.ProcessID{ContainerId: "boot", ExecId: id}
	if _, err := c.CreateProcess(ctx, &api.CreateProcessRequest{Id: pid, Argv: argv, Env: []string{"PATH=/bin"}}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.StartProcess(ctx, &api.StartProcessRequest{Id: pid}); err != nil {
		t.Fatal(err)
	}
	r, err := api.OpenOutput(ctx, c, pid, api.Stdio_STDOUT, 0)
	if err != nil {
		t.Fatal(err)
	}
	out, err := io.ReadAll(r)
	r.Close()
	if err != nil {
		t.Fatal(err)
	}
	w, err := c.WaitProcess(ctx, &api.WaitProcessRequest{Id: pid})
	if err != nil {
		t.Fatal(err)
	}
	c.RemoveProcess(ctx, &api.RemoveProcessRequest{Id: pid})
	return string(out), w.Status.ExitCode
}

func TestBootAgent(t *testing.T) {
	buildBootGuest(t)
	start := time.Now()
	vm := bootVM(t)
	c, closeClient := vm.connect(t, 2*time.Minute)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	info, err := c.Info(ctx, &api.InfoRequest{})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("boot to agent answering: %s (kernel %s)", time.Since(start).Round(time.Millisecond), info.KernelRelease)
	if con, err := os.ReadFile(vm.console); err == nil {
		for _, l := range strings.Split(string(con), "\n") {
			if strings.Contains(l, "macvz-agent") {
				t.Log(l)
			}
		}
	}
	if !info.Pid1 || info.Os != "linux" || info.MemoryTotalBytes == 0 {
		t.Errorf("Info %v", info)
	}

	// Network: find the NIC by MAC, rename it, address and default route.
	if _, err := c.ConfigureNetwork(ctx, &api.ConfigureNetworkRequest{
		Interfaces: []*api.Interface{{Mac: guestMAC, Name: "eth7", Mtu: 1400, Addresses: []string{"10.0.2.15/24", "fd00::15/64"}}},
		Routes:     []*api.Route{{Gateway: "10.0.2.2"}},
	}); err != nil {
		t.Fatal(err)
	}
	out, _ := guestRun(t, c, "ip", "sh", "-c", "ip addr show eth7; ip route; ip link show lo")
	for _, want := range []string{"10.0.2.15/24", "fd00::15/64", "mtu 1400", "default via 10.0.2.2 dev eth7", "LOOPBACK,UP"} {
		if !strings.Contains(out, want) {
			t.Errorf("guest network lacks %q:\n%s", want, out)
		}
	}

	if _, err := c.SetHostname(ctx, &api.SetHostnameRequest{Hostname: "pod-7"}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.WriteResolvConf(ctx, &api.WriteResolvConfRequest{Nameservers: []string{"10.0.2.3"}, Searches: []string{"svc.local"}}); err != nil {
		t.Fatal(err)
	}
	if out, _ := guestRun(t, c, "h", "sh", "-c", "hostname; cat /etc/hostname /etc/resolv.conf"); out != "pod-7\npod-7\n# written by macvz-agent\nnameserver 10.0.2.3\nsearch svc.local\n" {
		t.Errorf("hostname/resolv.conf: %q", out)
	}

	// 9p share, both ways.
	os.WriteFile(filepath.Join(vm.share, "from-host"), []byte("hello guest\n"), 0o644)
	if _, err := c.MountShare(ctx, &api.MountShareRequest{Tag: "share0", Fstype: "9p", Target: "/mnt/share/x", CreateTarget: true}); err != nil {
		t.Fatal(err)
	}
	if out, code := guestRun(t, c, "9p", "sh", "-c", "cat /mnt/share/x/from-host && echo hello host > /mnt/share/x/from-guest"); out != "hello guest\n" || code != 0 {
		t.Errorf("9p read: %q %d", out, code)
	}
	if b, _ := os.ReadFile(filepath.Join(vm.share, "from-guest")); string(b) != "hello host\n" {
		t.Errorf("9p write: %q", b)
	}
	if _, err := c.MountShare(ctx, &api.MountShareRequest{Tag: "nope", Fstype: "9p", Target: "/mnt/nope", CreateTarget: true}); err == nil {
		t.Error("mounting a missing tag worked")
	}

	// Exit codes, users, stats.
	if out, code := guestRun(t, c, "exit", "sh", "-c", "echo x; exit 7"); out != "x\n" || code != 7 {
		t.Errorf("exit: %q %d", out, code)
	}
	st, err := c.Stats(ctx, &api.StatsRequest{FilesystemPaths: []string{"/mnt/share/x"}})
	if err != nil || st.Memory.TotalBytes < 256<<20 || st.Cpu.UsageCoreNanoseconds == 0 || st.Filesystems[0].CapacityBytes == 0 {
		t.Errorf("Stats: %v %v", st, err)
	}

	// Port forward to a server in the guest.
	srv := &api.ProcessID{ContainerId: "boot", ExecId: "httpd"}
	if _, err := c.CreateProcess(ctx, &api.CreateProcessRequest{Id: srv, Env: []string{"PATH=/bin"},
		Argv: []string{"sh", "-c", "mkdir -p /tmp/www && echo served > /tmp/www/index.html && exec httpd -f -p 127.0.0.1:8080 -h /tmp/www"}}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.StartProcess(ctx, &api.StartProcessRequest{Id: srv}); err != nil {
		t.Fatal(err)
	}
	var fc *api.ForwardConn
	for range 100 {
		if fc, err = api.DialPort(ctx, c, 8080); err == nil {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprintf(fc, "GET /index.html HTTP/1.0\r\n\r\n")
	resp, err := io.ReadAll(fc)
	fc.Close()
	if err != nil || !strings.Contains(string(resp), "200 OK") || !strings.HasSuffix(string(resp), "served\n") {
		t.Errorf("port forward: %q %v", resp, err)
	}

	// A new host connection (the shim restarting) gets a fresh session.
	closeClient()
	c, closeClient = vm.connect(t, 30*time.Second)
	defer closeClient()
	if _, err := c.Ping(ctx, &api.PingRequest{}); err != nil {
		t.Fatalf("Ping after reconnect: %v", err)
	}
	l, err := c.ListProcesses(ctx, &api.ListProcessesRequest{})
	if err != nil || len(l.Processes) != 1 || l.Processes[0].State != api.ProcessState_RUNNING {
		t.Errorf("processes after reconnect: %v %v", l, err)
	}

	// Shutdown: httpd gets SIGTERM, the guest powers off, QEMU exits.
	if _, err := c.Shutdown(ctx, &api.ShutdownRequest{GracePeriodMs: 2000}); err != nil {
		t.Fatal(err)
	}
	select {
	case <-vm.exited:
	case <-time.After(60 * time.Second):
		t.Fatal("the guest did not power off")
	}
}

// The ACPI power button (QMP system_powerdown, what the QEMU driver's Stop
// does) powers the guest off through the agent.
func TestBootPowerButton(t *testing.T) {
	buildBootGuest(t)
	vm := bootVM(t)
	c, closeClient := vm.connect(t, 2*time.Minute)
	defer closeClient()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if _, err := c.Ping(ctx, &api.PingRequest{}); err != nil {
		t.Fatal(err)
	}
	// The button's modules (button, evdev) are among the late ones, which
	// load after the rest: wait for every module, as the host does before
	// it saves a VM's state. A press before they are in is lost.
	if r, err := c.Info(ctx, &api.InfoRequest{WaitModules: true}); err != nil || r.GetModulesLoadedUptimeNs() == 0 {
		t.Fatalf("Info waiting for the modules: %v, modules loaded at %d ns", err, r.GetModulesLoadedUptimeNs())
	}
	q, err := net.Dial("unix", filepath.Join(vm.dir, "qmp.sock"))
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	r := bufio.NewReader(q)
	r.ReadString('\n') // greeting
	fmt.Fprintf(q, `{"execute":"qmp_capabilities"}`+"\n")
	r.ReadString('\n')
	fmt.Fprintf(q, `{"execute":"system_powerdown"}`+"\n")
	select {
	case <-vm.exited:
	case <-time.After(60 * time.Second):
		t.Fatal("the guest did not power off on the power button")
	}
}

// With the late modules held back (--late-modules=1h), what a process asks
// the kernel for loads through the agent as the kernel's modprobe helper,
// from the guest's restricted index: a bridge (SIOCBRADDBR asks for
// "bridge"), an overlay mount ("fs-overlay") and the first open of
// /dev/fuse, a node the agent made from modules.devname
// ("char-major-10-229"). The helper is /proc/1/exe and the index a
// read-only mount.
func TestBootModprobe(t *testing.T) {
	buildBootGuest(t)
	vm := bootVM(t, "--late-modules=1h")
	c, closeClient := vm.connect(t, 2*time.Minute)
	defer closeClient()
	script := `for m in bridge overlay fuse; do test -e /sys/module/$m/initstate && echo "$m in before"; done
brctl addbr mzbr0 && echo bridge ok
mkdir -p /tmp/o/l /tmp/o/u /tmp/o/w /tmp/o/m
mount -t overlay overlay -o lowerdir=/tmp/o/l,upperdir=/tmp/o/u,workdir=/tmp/o/w /tmp/o/m && echo overlay ok
test -c /dev/fuse && cat /dev/fuse 2>/dev/null; test -e /sys/module/fuse/initstate && echo fuse ok
mount -t xfs none /mnt 2>/dev/null || echo xfs refused
echo "helper $(cat /proc/sys/kernel/modprobe)"
echo x >> /lib/modules/$(uname -r)/modules.dep 2>/dev/null || echo index read-only
dmesg | grep 'macvz-agent: modprobe'`
	out, code := guestRun(t, c, "modprobe", "/bin/sh", "-c", script)
	t.Logf("guest:\n%s", out)
	if strings.Contains(out, " in before") {
		t.Fatalf("a late module was loaded before anything asked (exit %d)", code)
	}
	for _, want := range []string{
		"bridge ok", "overlay ok", "fuse ok", "xfs refused",
		// What the helper runs and reads cannot be replaced in the guest's
		// root (by a container's root without CAP_SYS_ADMIN).
		"helper /proc/1/exe", "index read-only",
		`modprobe "bridge": loaded bridge`, `modprobe "fs-overlay": loaded overlay`,
		`modprobe "char-major-10-229": loaded fuse`, `modprobe "fs-xfs": no module`,
	} {
		if !strings.Contains(out, want) {
			t.Errorf("no %q in the guest's output", want)
		}
	}
}

package qemu

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/containerd/errdefs"

	"github.com/macvz/macvz/runtime/vm"
)

// fakeFiles makes the files a spec points at.
func fakeFiles(t *testing.T) (dir, kernel, initrd, disk, share string) {
	t.Helper()
	root := t.TempDir()
	dir = filepath.Join(root, "vm")
	kernel = filepath.Join(root, "vmlinux")
	initrd = filepath.Join(root, "initrd.img")
	disk = filepath.Join(root, "disk,0.raw") // a comma, to see it escaped
	share = filepath.Join(root, "share")
	for _, f := range []string{kernel, initrd, disk} {
		if err := os.WriteFile(f, []byte("x"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Mkdir(share, 0o755); err != nil {
		t.Fatal(err)
	}
	return
}

func sampleSpec(t *testing.T) *vm.Spec {
	dir, kernel, initrd, disk, share := fakeFiles(t)
	return &vm.Spec{
		ID:          "sb1",
		Dir:         dir,
		CPUs:        2,
		MemoryBytes: 512 << 20,
		Boot:        vm.Boot{Kind: vm.BootLinux, Kernel: kernel, Initrd: initrd, Cmdline: "quiet rdinit=/init"},
		Disks:       []vm.Disk{{Path: disk}, {Path: disk, ReadOnly: true}},
		Shares:      []vm.Share{{Tag: "vol0", HostPath: share, ReadOnly: true}},
		NICs: []vm.NIC{
			{Kind: vm.NICTap, Device: "tap0", MAC: "02:00:00:00:00:01"},
			{Kind: vm.NICUser, MAC: "02:00:00:00:00:02"},
		},
		ConsoleLog: filepath.Join(dir, "console.log"),
		QEMU:       vm.QEMUOptions{Accel: "tcg"},
	}
}

func TestArgs(t *testing.T) {
	s := sampleSpec(t)
	d, root := s.Dir, filepath.Dir(s.Dir)
	s.RestoreFrom = filepath.Join(root, "it's.state")
	got := Args(s, AccelTCG, "", "/usr/share/qemu/qboot.rom")
	want := []string{
		"-name", "sb1",
		"-M", "q35",
		"-accel", "tcg",
		"-sandbox", "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny",
		"-nodefaults", "-no-user-config", "-nographic", "-display", "none",
		"-no-reboot",
		"-smp", "2",
		"-m", "512M",
		"-kernel", root + "/vmlinux",
		"-bios", "/usr/share/qemu/qboot.rom",
		"-initrd", root + "/initrd.img",
		"-append", "console=ttyS0 panic=-1 cryptomgr.notests mitigations=off quiet rdinit=/init",
		"-chardev", "file,id=con,path=/proc/self/fd/3",
		"-serial", "chardev:con",
		"-chardev", "socket,id=qmp,path=" + d + "/qmp.sock,server=on,wait=off",
		"-mon", "chardev=qmp,mode=control",
		"-device", "virtio-serial-pci,id=vser",
		"-chardev", "socket,id=agent,path=" + d + "/agent.sock,server=on,wait=off",
		"-device", "virtserialport,bus=vser.0,chardev=agent,name=agent",
		"-object", "rng-random,id=rng,filename=/dev/urandom",
		"-device", "virtio-rng-pci,rng=rng",
		"-device", "virtio-balloon-pci,id=balloon",
		"-drive", "file=" + root + "/disk,,0.raw,format=raw,if=none,id=disk0,cache=writeback,discard=unmap",
		"-device", "virtio-blk-pci,drive=disk0",
		"-drive", "file=" + root + "/disk,,0.raw,format=raw,if=none,id=disk1,cache=writeback,discard=unmap,readonly=on",
		"-device", "virtio-blk-pci,drive=disk1",
		"-fsdev", "local,id=fs0,path=" + root + "/share,security_model=none,multidevs=remap,readonly=on",
		"-device", "virtio-9p-pci,fsdev=fs0,mount_tag=vol0",
		"-netdev", "tap,id=net0,ifname=tap0,script=no,downscript=no",
		"-device", "virtio-net-pci,netdev=net0,mac=02:00:00:00:00:01,romfile=",
		"-netdev", "user,id=net1",
		"-device", "virtio-net-pci,netdev=net1,mac=02:00:00:00:00:02,romfile=",
		"-incoming", "fd:5",
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("args differ\n got: %q\nwant: %q", got, want)
	}
	for _, a := range got {
		if strings.Contains(a, "vhost") {
			t.Errorf("vhost requested: %q", a)
		}
	}
}

// An arm64 guest: qemu-system-aarch64's virt machine with -cpu max under
// TCG, the PL011 console, the same virtio-pci devices and agent channel
// as amd64, and QEMU's own firmware for virt.
func TestArgsARM64(t *testing.T) {
	s := sampleSpec(t)
	s.Arch = ArchARM64
	d, root := s.Dir, filepath.Dir(s.Dir)
	s.NICs = s.NICs[1:]
	got := Args(s, AccelTCG, "", "")
	want := []string{
		"-name", "sb1",
		"-M", "virt,gic-version=max",
		"-accel", "tcg",
		"-cpu", "max",
		"-sandbox", "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny",
		"-nodefaults", "-no-user-config", "-nographic", "-display", "none",
		"-no-reboot",
		"-smp", "2",
		"-m", "512M",
		"-kernel", root + "/vmlinux",
		"-initrd", root + "/initrd.img",
		"-append", "console=ttyAMA0 panic=-1 cryptomgr.notests mitigations=off quiet rdinit=/init",
		"-chardev", "file,id=con,path=/proc/self/fd/3",
		"-serial", "chardev:con",
		"-chardev", "socket,id=qmp,path=" + d + "/qmp.sock,server=on,wait=off",
		"-mon", "chardev=qmp,mode=control",
		"-device", "virtio-serial-pci,id=vser",
		"-chardev", "socket,id=agent,path=" + d + "/agent.sock,server=on,wait=off",
		"-device", "virtserialport,bus=vser.0,chardev=agent,name=agent",
		"-object", "rng-random,id=rng,filename=/dev/urandom",
		"-device", "virtio-rng-pci,rng=rng",
		"-device", "virtio-balloon-pci,id=balloon",
		"-drive", "file=" + root + "/disk,,0.raw,format=raw,if=none,id=disk0,cache=writeback,discard=unmap",
		"-device", "virtio-blk-pci,drive=disk0",
		"-drive", "file=" + root + "/disk,,0.raw,format=raw,if=none,id=disk1,cache=writeback,discard=unmap,readonly=on",
		"-device", "virtio-blk-pci,drive=disk1",
		"-fsdev", "local,id=fs0,path=" + root + "/share,security_model=none,multidevs=remap,readonly=on",
		"-device", "virtio-9p-pci,fsdev=fs0,mount_tag=vol0",
		"-netdev", "user,id=net0",
		"-device", "virtio-net-pci,netdev=net0,mac=02:00:00:00:00:02,romfile=",
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("args differ\n got: %q\nwant: %q", got, want)
	}
	// On an arm64 host with kvm: the host's CPU.
	kvm := strings.Join(Args(s, AccelKVM, ARM64Machine, ""), " ")
	if !strings.Contains(kvm, "-M virt,gic-version=max -accel kvm -cpu host -sandbox") {
		t.Errorf("kvm args: %s", kvm)
	}
}

// Which binary, machine and accelerator a spec gets, by architecture.
func TestConfigArch(t *testing.T) {
	d := New(WithBinary("qemu-x"), WithARM64Binary("qemu-a"), WithMachineType("pc"))
	s := &vm.Spec{}
	if c := d.config(s); c.arch != ArchAMD64 || c.binary != "qemu-x" || c.machine != "pc" {
		t.Errorf("amd64 default: %+v", c)
	}
	s.Arch = ArchARM64
	if c := d.config(s); c.binary != "qemu-a" || c.machine != ARM64Machine {
		t.Errorf("arm64: %+v", c)
	}
	// The daemon's configured binary is the amd64 one: an arm64 guest
	// keeps qemu-system-aarch64.
	s.QEMU = vm.QEMUOptions{Binary: "/usr/bin/qemu-system-x86_64"}
	if c := New().config(s); c.binary != DefaultARM64Binary {
		t.Errorf("arm64 with an amd64 binary configured: %+v", c)
	}
	s.QEMU.ARM64Binary = "/opt/qemu-system-aarch64"
	if c := New().config(s); c.binary != "/opt/qemu-system-aarch64" {
		t.Errorf("arm64 binary option: %+v", c)
	}
	if !nativeArch(runtime.GOARCH) {
		t.Error("nativeArch(GOARCH)")
	}
	foreign := ArchARM64
	if runtime.GOARCH == ArchARM64 {
		foreign = ArchAMD64
	}
	if got := New(WithAccel(AccelAuto)).resolveAccel(AccelAuto, foreign); got != AccelTCG {
		t.Errorf("auto for a %s guest on %s: %s", foreign, runtime.GOARCH, got)
	}
}

func TestArgsKVMAndDefaults(t *testing.T) {
	s := &vm.Spec{ID: "x", Dir: "/run/x", CPUs: 1, MemoryBytes: 100<<20 + 1,
		Boot: vm.Boot{Kind: vm.BootLinux, Kernel: "/k", Cmdline: "console=hvc0 panic=5"}}
	got := strings.Join(Args(s, AccelKVM, "", ""), " ")
	for _, want := range []string{
		"-M q35 -accel kvm -cpu host ",
		"-m 101M ",
		"-append cryptomgr.notests console=hvc0 panic=5 ",
		"-chardev file,id=con,path=/proc/self/fd/3 ",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("%q not in %q", want, got)
		}
	}
	if strings.Contains(got, "-initrd") || strings.Contains(got, "-incoming") {
		t.Errorf("unexpected option in %q", got)
	}
}

func TestArgsLongDir(t *testing.T) {
	dir := "/var/lib/macvz/sandboxes/" + strings.Repeat("a", 64) + "/vm/state/qemu"
	s := &vm.Spec{ID: "x", Dir: dir, CPUs: 1, MemoryBytes: 64 << 20, Boot: vm.Boot{Kind: vm.BootLinux, Kernel: "/k"}}
	got := strings.Join(Args(s, AccelTCG, "q35", ""), " ")
	if !strings.Contains(got, "socket,id=agent,path=/proc/self/fd/4/agent.sock,") ||
		!strings.Contains(got, "socket,id=qmp,path=/proc/self/fd/4/qmp.sock,") {
		t.Errorf("long socket paths not redirected: %s", got)
	}
	if !needsDirFD(dir) || needsDirFD("/tmp/x") {
		t.Error("needsDirFD")
	}
}

func TestCmdline(t *testing.T) {
	for in, want := range map[string]string{
		"":                         "console=ttyS0 panic=-1 cryptomgr.notests mitigations=off",
		"quiet":                    "console=ttyS0 panic=-1 cryptomgr.notests mitigations=off quiet",
		"console=ttyS0,115200":     "panic=-1 cryptomgr.notests mitigations=off console=ttyS0,115200",
		"panic=1 -- console=x":     "console=ttyS0 cryptomgr.notests mitigations=off panic=1 -- console=x",
		"console=hvc0 panic=0 foo": "cryptomgr.notests mitigations=off console=hvc0 panic=0 foo",
		"cryptomgr.notests=0":      "console=ttyS0 panic=-1 mitigations=off cryptomgr.notests=0",
		"mitigations=auto":         "console=ttyS0 panic=-1 cryptomgr.notests mitigations=auto",
		// After "--" is init's, not the kernel's.
		"-- mitigations=auto": "console=ttyS0 panic=-1 cryptomgr.notests mitigations=off -- mitigations=auto",
	} {
		if got := Cmdline(in); got != want {
			t.Errorf("Cmdline(%q) = %q, want %q", in, got, want)
		}
	}
	for in, want := range map[string]string{
		"quiet":        "console=ttyAMA0 panic=-1 cryptomgr.notests mitigations=off quiet",
		"console=hvc0": "panic=-1 cryptomgr.notests mitigations=off console=hvc0",
	} {
		if got := CmdlineFor(ArchARM64, AccelTCG, in); got != want {
			t.Errorf("CmdlineFor(arm64, tcg, %q) = %q, want %q", in, got, want)
		}
	}
	// Under KVM the guest runs on the host's CPU: its defences stay.
	for _, arch := range []string{ArchAMD64, ArchARM64} {
		if got := CmdlineFor(arch, AccelKVM, "quiet"); strings.Contains(got, "mitigations") {
			t.Errorf("CmdlineFor(%s, kvm, quiet) = %q: no mitigations= under kvm", arch, got)
		}
	}
}

func TestValidate(t *testing.T) {
	d := New(WithBinary("sh"), WithARM64Binary("sh")) // any executable: Validate only looks it up
	if err := d.Validate(sampleSpec(t)); err != nil {
		t.Fatalf("valid spec: %v", err)
	}
	arm := sampleSpec(t)
	arm.Arch = ArchARM64
	if err := d.Validate(arm); err != nil {
		t.Fatalf("valid arm64 spec: %v", err)
	}
	arm.QEMU.Accel = AccelKVM
	if err := d.Validate(arm); runtime.GOARCH != ArchARM64 && !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Errorf("kvm for an arm64 guest on %s: %v", runtime.GOARCH, err)
	}
	type tc struct {
		name  string
		edit  func(*vm.Spec)
		class error
		msg   string
	}
	cases := []tc{
		{"macos", func(s *vm.Spec) { s.Boot.Kind = vm.BootMacOS }, errdefs.ErrInvalidArgument, "macOS guests need the vz backend on a Mac"},
		{"kind", func(s *vm.Spec) { s.Boot.Kind = "efi" }, errdefs.ErrInvalidArgument, `boot.kind "efi"`},
		{"id", func(s *vm.Spec) { s.ID = "" }, errdefs.ErrInvalidArgument, "id is empty"},
		{"dir", func(s *vm.Spec) { s.Dir = "rel" }, errdefs.ErrInvalidArgument, "dir"},
		{"cpus", func(s *vm.Spec) { s.CPUs = 0 }, errdefs.ErrInvalidArgument, "cpus 0"},
		{"memory", func(s *vm.Spec) { s.MemoryBytes = 63 << 20 }, errdefs.ErrInvalidArgument, "memoryBytes"},
		{"no kernel", func(s *vm.Spec) { s.Boot.Kernel = "" }, errdefs.ErrInvalidArgument, "boot.kernel is empty"},
		{"kernel missing", func(s *vm.Spec) { s.Boot.Kernel = "/nonexistent/vmlinux" }, errdefs.ErrFailedPrecondition, "boot.kernel"},
		{"kernel dir", func(s *vm.Spec) { s.Boot.Kernel = s.Shares[0].HostPath }, errdefs.ErrInvalidArgument, "boot.kernel"},
		{"initrd", func(s *vm.Spec) { s.Boot.Initrd = "/nonexistent" }, errdefs.ErrFailedPrecondition, "boot.initrd"},
		{"cmdline", func(s *vm.Spec) { s.Boot.Cmdline = "a\nb" }, errdefs.ErrInvalidArgument, "boot.cmdline"},
		{"disk", func(s *vm.Spec) { s.Disks[1].Path = "/nonexistent" }, errdefs.ErrFailedPrecondition, "disks[1].path"},
		{"share missing", func(s *vm.Spec) { s.Shares[0].HostPath = "/nonexistent" }, errdefs.ErrFailedPrecondition, "shares[0].hostPath"},
		{"share file", func(s *vm.Spec) { s.Shares[0].HostPath = s.Boot.Kernel }, errdefs.ErrInvalidArgument, "is not a directory"},
		{"share tag", func(s *vm.Spec) { s.Shares[0].Tag = "a,b" }, errdefs.ErrInvalidArgument, "shares[0].tag"},
		{"share tag dup", func(s *vm.Spec) { s.Shares = append(s.Shares, s.Shares[0]) }, errdefs.ErrInvalidArgument, "used twice"},
		{"share dirs", func(s *vm.Spec) {
			s.Shares[0].Dirs = []vm.ShareDir{{Name: "0", HostPath: s.Shares[0].HostPath}}
			s.Shares[0].HostPath = ""
		}, errdefs.ErrInvalidArgument, "several named directories is the vz backend's"},
		{"nic kind", func(s *vm.Spec) { s.NICs[0].Kind = vm.NICVmnetNAT }, errdefs.ErrInvalidArgument, `nics[0].kind "vmnet-nat"`},
		{"nic device", func(s *vm.Spec) { s.NICs[0].Device = "" }, errdefs.ErrInvalidArgument, "nics[0].device"},
		{"mac", func(s *vm.Spec) { s.NICs[1].MAC = "02:00:00:00:00" }, errdefs.ErrInvalidArgument, "nics[1].mac"},
		{"mac multicast", func(s *vm.Spec) { s.NICs[1].MAC = "03:00:00:00:00:01" }, errdefs.ErrInvalidArgument, "multicast"},
		{"restore", func(s *vm.Spec) { s.RestoreFrom = "/nonexistent.state" }, errdefs.ErrFailedPrecondition, "restoreFrom"},
		{"RAM file alone", func(s *vm.Spec) { s.RestoreRAM = s.Boot.Kernel }, errdefs.ErrInvalidArgument, "without restoreFrom"},
		{"RAM file missing", func(s *vm.Spec) { s.RestoreFrom = s.Boot.Kernel; s.RestoreRAM = "/nonexistent.ram" }, errdefs.ErrFailedPrecondition, "restoreRAM"},
		{"accel", func(s *vm.Spec) { s.QEMU.Accel = "hvf" }, errdefs.ErrInvalidArgument, `qemu accel "hvf"`},
		{"machine", func(s *vm.Spec) { s.QEMU.Machine = "microvm" }, errdefs.ErrInvalidArgument, `qemu machine "microvm"`},
		{"binary", func(s *vm.Spec) { s.QEMU.Binary = "/nonexistent/qemu" }, errdefs.ErrFailedPrecondition, "(apt-get install qemu-system-x86)"},
		{"arch", func(s *vm.Spec) { s.Arch = "riscv64" }, errdefs.ErrInvalidArgument, `arch "riscv64"`},
		{"arm64 binary", func(s *vm.Spec) { s.Arch = ArchARM64; s.QEMU.ARM64Binary = "/nonexistent/qemu-system-aarch64" }, errdefs.ErrFailedPrecondition,
			"(apt-get install qemu-system-arm)"},
		{"arm64 machine", func(s *vm.Spec) { s.Arch = ArchARM64; s.QEMU.Machine = "q35" }, errdefs.ErrInvalidArgument, `arm64 guests run on "virt"`},
		{"arm64 restore", func(s *vm.Spec) { s.Arch = ArchARM64; s.RestoreFrom = s.Boot.Kernel }, errdefs.ErrFailedPrecondition, "only amd64"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			s := sampleSpec(t)
			c.edit(s)
			err := d.Validate(s)
			if err == nil {
				t.Fatal("no error")
			}
			if !errors.Is(err, c.class) {
				t.Errorf("error %v is not %v", err, c.class)
			}
			if !strings.Contains(err.Error(), c.msg) {
				t.Errorf("error %q does not mention %q", err, c.msg)
			}
		})
	}
	if err := d.Validate(nil); !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Errorf("nil spec: %v", err)
	}
	// Create validates too and creates nothing on error.
	s := sampleSpec(t)
	s.CPUs = 0
	if _, err := d.Create(context.Background(), s); !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Errorf("Create: %v", err)
	}
	if _, err := os.Stat(s.Dir); !os.IsNotExist(err) {
		t.Errorf("Create of an invalid spec made its dir: %v", err)
	}
}

// TestRestorable: amd64 guests can be restored from a saved state, arm64
// guests cannot, whatever their files.
func TestRestorable(t *testing.T) {
	d := New()
	if err := d.Restorable(&vm.Spec{Boot: vm.Boot{Kind: vm.BootLinux}}); err != nil {
		t.Errorf("default (amd64) guest: %v", err)
	}
	if err := d.Restorable(&vm.Spec{Arch: ArchAMD64, QEMU: vm.QEMUOptions{Machine: "pc"}}); err != nil {
		t.Errorf("amd64 guest on pc: %v", err)
	}
	err := d.Restorable(&vm.Spec{Arch: ArchARM64})
	if !errors.Is(err, errdefs.ErrFailedPrecondition) || !strings.Contains(err.Error(), "only amd64") {
		t.Errorf("arm64 guest: %v", err)
	}
	if err := d.Restorable(nil); !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Errorf("nil spec: %v", err)
	}
}

// TestQbootFor: the firmware is found beside the binary (<prefix>/bin and
// <prefix>/share/qemu), and only as a regular file.
func TestQbootFor(t *testing.T) {
	root := t.TempDir()
	bin := filepath.Join(root, "bin", "qemu-system-x86_64")
	if got := QbootFor(bin); got != "" {
		t.Errorf("no firmware installed: %q", got)
	}
	share := filepath.Join(root, "share", "qemu")
	if err := os.MkdirAll(filepath.Join(share, "qboot.rom"), 0o755); err != nil {
		t.Fatal(err)
	}
	if got := QbootFor(bin); got != "" {
		t.Errorf("a directory named qboot.rom: %q", got)
	}
	if err := os.Remove(filepath.Join(share, "qboot.rom")); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(share, "qboot.rom"), []byte("rom"), 0o644); err != nil {
		t.Fatal(err)
	}
	if got, want := QbootFor(bin), filepath.Join(share, "qboot.rom"); got != want {
		t.Errorf("QbootFor = %q, want %q", got, want)
	}
}

func TestResolveAccel(t *testing.T) {
	d := New()
	if d.Name() != "qemu" {
		t.Error(d.Name())
	}
	for _, a := range []string{AccelKVM, AccelTCG} {
		if got := d.resolveAccel(a, runtime.GOARCH); got != a {
			t.Errorf("resolveAccel(%s) = %s", a, got)
		}
	}
	got := d.resolveAccel(AccelAuto, runtime.GOARCH)
	if got != AccelKVM && got != AccelTCG {
		t.Errorf("auto resolved to %q", got)
	}
	if got == AccelKVM && !kvmUsable() {
		t.Error("auto picked kvm on a host without usable kvm")
	}
}

// A machine that never started stops cleanly and refuses the rest.
func TestMachineNotStarted(t *testing.T) {
	s := sampleSpec(t)
	m, err := New(WithBinary("sh")).Create(context.Background(), s)
	if err != nil {
		t.Fatal(err)
	}
	if m.State() != vm.StateCreated {
		t.Fatal(m.State())
	}
	ctx := context.Background()
	if _, err := m.DialAgent(ctx); !errors.Is(err, errdefs.ErrFailedPrecondition) {
		t.Errorf("DialAgent: %v", err)
	}
	if err := m.Save(ctx, filepath.Join(s.Dir, "x")); !errors.Is(err, errdefs.ErrFailedPrecondition) {
		t.Errorf("Save: %v", err)
	}
	if _, err := m.Stats(ctx); !errors.Is(err, errdefs.ErrFailedPrecondition) {
		t.Errorf("Stats: %v", err)
	}
	for i := 0; i < 2; i++ {
		if err := m.Stop(ctx, time.Second); err != nil {
			t.Fatal(err)
		}
	}
	<-m.Done()
	if e := m.Exit(); !e.Clean || m.State() != vm.StateStopped {
		t.Errorf("exit %+v state %s", e, m.State())
	}
	if err := m.Start(ctx); !errors.Is(err, errdefs.ErrFailedPrecondition) {
		t.Errorf("Start after Stop: %v", err)
	}
}

// A QEMU that cannot be executed fails Start and leaves the machine stopped.
func TestStartExecFails(t *testing.T) {
	s := sampleSpec(t)
	bin := filepath.Join(t.TempDir(), "qemu")
	if err := os.WriteFile(bin, []byte("#!/nonexistent/interpreter\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	s.QEMU.Binary = bin
	m, err := New().Create(context.Background(), s)
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Start(context.Background()); err == nil {
		t.Fatal("Start succeeded")
	}
	<-m.Done()
	if m.State() != vm.StateStopped || m.Exit().Clean {
		t.Errorf("state %s exit %+v", m.State(), m.Exit())
	}
}

// A QEMU that exits at once: Start reports its last stderr line.
func TestStartQEMUExits(t *testing.T) {
	s := sampleSpec(t)
	bin := filepath.Join(t.TempDir(), "qemu")
	script := "#!/bin/sh\necho 'some noise' >&2\necho 'qemu: could not do the thing' >&2\nexit 3\n"
	if err := os.WriteFile(bin, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	s.QEMU.Binary = bin
	m, err := New().Create(context.Background(), s)
	if err != nil {
		t.Fatal(err)
	}
	err = m.Start(context.Background())
	if err == nil || !strings.Contains(err.Error(), "qemu exited with status 3: qemu: could not do the thing") {
		t.Fatalf("Start: %v", err)
	}
	<-m.Done()
	if e := m.Exit(); e.Clean || !strings.Contains(e.Reason, "could not do the thing") {
		t.Errorf("exit %+v", e)
	}
	log, _ := os.ReadFile(filepath.Join(s.Dir, LogFile))
	if !strings.Contains(string(log), "could not do the thing") {
		t.Errorf("qemu.log: %q", log)
	}
	if _, err := os.Stat(filepath.Join(s.Dir, PIDFile)); !os.IsNotExist(err) {
		t.Errorf("pid file left behind: %v", err)
	}
}

func TestProcStats(t *testing.T) {
	st, err := procStats(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	if st.MemoryBytes == 0 {
		t.Errorf("stats %+v", st)
	}
}

func TestTailBuffer(t *testing.T) {
	var tb tailBuffer
	tb.Write([]byte("one\ntwo\n"))
	tb.Write([]byte("thr"))
	tb.Write([]byte("ee\n\n"))
	if got := tb.LastLine(); got != "three" {
		t.Errorf("LastLine %q", got)
	}
	tb.Write([]byte(strings.Repeat("x", 3*tailMax) + "\nend"))
	if got := tb.LastLine(); got != "end" || len(tb.buf) > tailMax {
		t.Errorf("LastLine %q len %d", got, len(tb.buf))
	}
}

// A writable share is mapped (a pod's guest makes nothing real on the
// host) unless it is the node VM's, passed through.
func TestShareSecurityModel(t *testing.T) {
	for _, tc := range []struct {
		share vm.Share
		want  string
	}{
		{vm.Share{Tag: "t"}, "security_model=mapped-xattr,multidevs=remap"},
		{vm.Share{Tag: "t", Passthrough: true}, "security_model=passthrough,multidevs=remap"},
		{vm.Share{Tag: "t", ReadOnly: true, Passthrough: true}, "security_model=none,multidevs=remap,readonly=on"},
	} {
		s := sampleSpec(t)
		tc.share.HostPath = s.Shares[0].HostPath
		s.Shares = []vm.Share{tc.share}
		args := Args(s, AccelTCG, "", "")
		found := false
		for i, a := range args {
			if a == "-fsdev" && i+1 < len(args) && strings.HasSuffix(args[i+1], tc.want) {
				found = true
			}
		}
		if !found {
			t.Errorf("%+v: no -fsdev ending %q in %q", tc.share, tc.want, args)
		}
	}
}

package vz

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/containerd/errdefs"

	"github.com/macvz/macvz/runtime/vm"
)

// fakeImage writes a file that starts like an arm64 Image: a 64-byte
// header with the magic at byte 56, as Debian's arm64 vmlinuz does.
func fakeImage(t *testing.T, dir string) string {
	t.Helper()
	hdr := make([]byte, 4096)
	copy(hdr, "MZ")
	copy(hdr[56:], "ARM\x64")
	p := filepath.Join(dir, "vmlinuz")
	if err := os.WriteFile(p, hdr, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// linuxSpec is a Linux guest as runtime/sandbox describes one for vz.
func linuxSpec(t *testing.T) *vm.Spec {
	t.Helper()
	dir := t.TempDir()
	initrd := filepath.Join(dir, "initrd")
	if err := os.WriteFile(initrd, []byte("070701"), 0o644); err != nil {
		t.Fatal(err)
	}
	return &vm.Spec{
		ID: "sb2", Dir: "/run/macvz/sandboxes/sb2", CPUs: 2, MemoryBytes: 1 << 30, Arch: "arm64",
		Boot: vm.Boot{Kind: vm.BootLinux, Kernel: fakeImage(t, dir), Initrd: initrd, Cmdline: "quiet"},
		Shares: []vm.Share{
			{Tag: "macvz-shared", HostPath: "/run/macvz/sandboxes/sb2/shared"},
			{Tag: "macvz-shared-ro", HostPath: "/run/macvz/sandboxes/sb2/shared-ro", ReadOnly: true},
		},
		NICs:       []vm.NIC{{Kind: vm.NICSocket, Device: "/var/run/socket_vmnet.sb2", MAC: "02:aa:bb:cc:dd:01"}},
		ConsoleLog: "/run/macvz/sandboxes/sb2/console.log",
	}
}

func TestNewPlanLinux(t *testing.T) {
	s := linuxSpec(t)
	p, err := NewPlan(s, testLimits)
	if err != nil {
		t.Fatal(err)
	}
	if p.Boot != vm.BootLinux || p.Linux == nil {
		t.Fatalf("plan %+v", p)
	}
	want := LinuxBoot{Kernel: s.Boot.Kernel, Initrd: s.Boot.Initrd, CmdLine: "quiet console=hvc0 panic=-1 -- --listen=vsock:1024"}
	if *p.Linux != want {
		t.Errorf("boot loader %+v, want %+v", *p.Linux, want)
	}
	// No Mac identity; no disk needed (the initrd is the root).
	if p.HardwareModel != nil || p.AuxStorage != "" || p.MachineIDFile != "" || len(p.Disks) != 0 {
		t.Errorf("macOS fields in a Linux plan: %+v", p)
	}
	if p.CPUs != 2 || p.Memory != 1<<30 || p.ConsoleLog != s.ConsoleLog {
		t.Errorf("size/console %+v", p)
	}
	if len(p.Shares) != 2 || !reflect.DeepEqual(p.Shares[0], SharePlan{Tag: "macvz-shared", HostPath: s.Shares[0].HostPath}) || !p.Shares[1].ReadOnly {
		t.Errorf("shares %+v", p.Shares)
	}
	if len(p.NICs) != 1 || p.NICs[0].Kind != vm.NICSocket || p.NICs[0].Interface != "/var/run/socket_vmnet.sb2" || p.NICs[0].MAC.String() != "02:aa:bb:cc:dd:01" {
		t.Errorf("nics %+v", p.NICs)
	}

	// Every NIC kind macOS guests have; a disk; no initrd; arch left to
	// the backend's default.
	s = linuxSpec(t)
	s.Arch, s.Boot.Initrd = "", ""
	s.Disks = []vm.Disk{{Path: "/snap/9/disk.img"}}
	s.NICs = []vm.NIC{{Kind: vm.NICVmnetNAT, MAC: "02:00:00:00:00:01"}, {Kind: vm.NICVmnetBridged, Device: "en0", MAC: "02:00:00:00:00:02"}}
	p, err = NewPlan(s, testLimits)
	if err != nil {
		t.Fatal(err)
	}
	if p.Linux.Initrd != "" || len(p.Disks) != 1 || p.NICs[0].Kind != vm.NICVmnetNAT || p.NICs[1].Interface != "en0" {
		t.Errorf("plan %+v %+v", p, p.Linux)
	}
}

func TestNewPlanLinuxRefuses(t *testing.T) {
	type class int
	const (
		invalid class = iota
		precond
	)
	for name, tc := range map[string]struct {
		change func(t *testing.T, s *vm.Spec)
		want   class
	}{
		"amd64 guest":       {func(_ *testing.T, s *vm.Spec) { s.Arch = "amd64" }, invalid},
		"no kernel":         {func(_ *testing.T, s *vm.Spec) { s.Boot.Kernel = "" }, invalid},
		"relative kernel":   {func(_ *testing.T, s *vm.Spec) { s.Boot.Kernel = "vmlinuz" }, invalid},
		"missing kernel":    {func(_ *testing.T, s *vm.Spec) { s.Boot.Kernel += ".gone" }, precond},
		"kernel is a dir":   {func(_ *testing.T, s *vm.Spec) { s.Boot.Kernel = filepath.Dir(s.Boot.Kernel) }, invalid},
		"gzip kernel":       {func(t *testing.T, s *vm.Spec) { writeKernel(t, s, []byte{0x1f, 0x8b, 8, 0}, 4096) }, invalid},
		"amd64 bzImage":     {func(t *testing.T, s *vm.Spec) { writeKernel(t, s, []byte("MZ"), 4096) }, invalid},
		"short kernel":      {func(t *testing.T, s *vm.Spec) { writeKernel(t, s, []byte("MZ"), 10) }, invalid},
		"relative initrd":   {func(_ *testing.T, s *vm.Spec) { s.Boot.Initrd = "initrd" }, invalid},
		"missing initrd":    {func(_ *testing.T, s *vm.Spec) { s.Boot.Initrd += ".gone" }, precond},
		"newline cmdline":   {func(_ *testing.T, s *vm.Spec) { s.Boot.Cmdline = "quiet\ninit=/bin/sh" }, invalid},
		"long cmdline":      {func(_ *testing.T, s *vm.Spec) { s.Boot.Cmdline = strings.Repeat("x", 2030) }, invalid},
		"serial agent":      {func(_ *testing.T, s *vm.Spec) { s.Boot.Cmdline = "quiet -- --listen=serial:agent" }, invalid},
		"other vsock port":  {func(_ *testing.T, s *vm.Spec) { s.Boot.Cmdline = "-- -listen vsock:2000" }, invalid},
		"restore":           {func(_ *testing.T, s *vm.Spec) { s.RestoreFrom = "/run/macvz/warm/state" }, precond},
		"long virtiofs tag": {func(_ *testing.T, s *vm.Spec) { s.Shares[0].Tag = strings.Repeat("t", 37) }, invalid},
		"repeated tag":      {func(_ *testing.T, s *vm.Spec) { s.Shares[1].Tag = s.Shares[0].Tag }, invalid},
		"tap NIC":           {func(_ *testing.T, s *vm.Spec) { s.NICs[0].Kind = vm.NICTap }, invalid},
		"user NIC":          {func(_ *testing.T, s *vm.Spec) { s.NICs[0].Kind = vm.NICUser }, invalid},
		"relative socket":   {func(_ *testing.T, s *vm.Spec) { s.NICs[0].Device = "vmnet.sock" }, invalid},
		"too many CPUs":     {func(_ *testing.T, s *vm.Spec) { s.CPUs = 9 }, invalid},
		"too little memory": {func(_ *testing.T, s *vm.Spec) { s.MemoryBytes = 128 << 20 }, invalid},
		"relative disk":     {func(_ *testing.T, s *vm.Spec) { s.Disks = []vm.Disk{{Path: "disk.img"}} }, invalid},
	} {
		s := linuxSpec(t)
		tc.change(t, s)
		_, err := NewPlan(s, testLimits)
		ok := tc.want == invalid && errdefs.IsInvalidArgument(err) || tc.want == precond && errdefs.IsFailedPrecondition(err)
		if !ok {
			t.Errorf("%s: %v", name, err)
		}
	}
}

// writeKernel replaces the spec's kernel with size bytes starting with
// head.
func writeKernel(t *testing.T, s *vm.Spec, head []byte, size int) {
	t.Helper()
	b := make([]byte, size)
	copy(b, head)
	if err := os.WriteFile(s.Boot.Kernel, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

func TestLinuxCmdline(t *testing.T) {
	for in, want := range map[string]string{
		"":                                  "console=hvc0 panic=-1 -- --listen=vsock:1024",
		"quiet":                             "quiet console=hvc0 panic=-1 -- --listen=vsock:1024",
		"console=ttyAMA0 panic=5":           "console=ttyAMA0 panic=5 console=hvc0 -- --listen=vsock:1024",
		"console=hvc0 -- --log-level=debug": "console=hvc0 panic=-1 -- --listen=vsock:1024 --log-level=debug",
		"-- --listen=vsock:1024 -system":    "console=hvc0 panic=-1 -- --listen=vsock:1024 -system",
		// A quoted "--" is a value, not the start of init's arguments.
		`x="a -- b" loglevel=7`: `x="a -- b" loglevel=7 console=hvc0 panic=-1 -- --listen=vsock:1024`,
	} {
		if got := LinuxCmdline(in); got != want {
			t.Errorf("LinuxCmdline(%q) = %q, want %q", in, got, want)
		}
	}
}

package vz

import (
	"errors"
	"strings"
	"testing"

	"github.com/containerd/errdefs"

	"github.com/macvz/macvz/runtime/vm"
)

var testLimits = Limits{MinCPUs: 1, MaxCPUs: 8, MinMemory: 512 << 20, MaxMemory: 16 << 30}

func macSpec() *vm.Spec {
	return &vm.Spec{
		ID: "sb1", Dir: "/run/macvz/sandboxes/sb1", CPUs: 4, MemoryBytes: 8 << 30,
		Boot:       vm.Boot{Kind: vm.BootMacOS, HardwareModel: []byte("hw"), AuxStorage: "/snap/7/nvram.bin"},
		Disks:      []vm.Disk{{Path: "/snap/7/disk.img"}},
		Shares:     []vm.Share{{Tag: "macvz-shared", HostPath: "/run/macvz/sandboxes/sb1/shared"}, {Tag: "ro", HostPath: "/data", ReadOnly: true}},
		NICs:       []vm.NIC{{Kind: vm.NICVmnetNAT, MAC: "02:aa:bb:cc:dd:ee"}},
		ConsoleLog: "/run/macvz/sandboxes/sb1/console.log",
	}
}

func TestNewPlan(t *testing.T) {
	p, err := NewPlan(macSpec(), testLimits)
	if err != nil {
		t.Fatal(err)
	}
	if p.CPUs != 4 || p.Memory != 8<<30 || p.MachineID != nil || p.AuxStorage != "/snap/7/nvram.bin" || len(p.Disks) != 1 {
		t.Errorf("plan %+v", p)
	}
	if len(p.Shares) != 2 || !p.Shares[1].ReadOnly || p.Shares[0].ReadOnly {
		t.Errorf("shares %+v", p.Shares)
	}
	if len(p.NICs) != 1 || p.NICs[0].Kind != vm.NICVmnetNAT || p.NICs[0].MAC.String() != "02:aa:bb:cc:dd:ee" {
		t.Errorf("nics %+v", p.NICs)
	}

	s := macSpec()
	s.NICs = []vm.NIC{{Kind: vm.NICVmnetBridged, Device: "en0", MAC: "02:00:00:00:00:01"}, {Kind: vm.NICSocket, Device: "/run/softnet.sock", MAC: "02:00:00:00:00:02"}}
	s.Boot.MachineID = []byte("id")
	s.Boot.MachineIDFile = "/run/macvz/sandboxes/sb1/machine-id"
	p, err = NewPlan(s, testLimits)
	if err != nil {
		t.Fatal(err)
	}
	if p.NICs[0].Interface != "en0" || p.NICs[1].Interface != "/run/softnet.sock" || string(p.MachineID) != "id" || p.MachineIDFile != s.Boot.MachineIDFile {
		t.Errorf("bridged/socket plan %+v", p)
	}
}

// TestPlanSavable: a macOS guest whose state is to be saved gets no
// entropy device and no console, which the framework has refused to
// save; any other VM keeps both.
func TestPlanSavable(t *testing.T) {
	p, err := NewPlan(macSpec(), testLimits)
	if err != nil {
		t.Fatal(err)
	}
	if !p.Entropy || p.ConsoleLog == "" {
		t.Errorf("an unsaved macOS VM: entropy %v, console %q", p.Entropy, p.ConsoleLog)
	}
	s := macSpec()
	s.Savable = true
	if p, err = NewPlan(s, testLimits); err != nil {
		t.Fatal(err)
	}
	if p.Entropy || p.ConsoleLog != "" {
		t.Errorf("a savable macOS VM: entropy %v, console %q", p.Entropy, p.ConsoleLog)
	}
}

func TestNewPlanRefuses(t *testing.T) {
	for name, tc := range map[string]struct {
		change  func(*vm.Spec)
		notImpl bool
	}{
		"unknown boot":        {func(s *vm.Spec) { s.Boot.Kind = "efi" }, true},
		"no hardware model":   {func(s *vm.Spec) { s.Boot.HardwareModel = nil }, false},
		"relative aux":        {func(s *vm.Spec) { s.Boot.AuxStorage = "nvram.bin" }, false},
		"relative machine id": {func(s *vm.Spec) { s.Boot.MachineIDFile = "machine-id" }, false},
		"too many CPUs":       {func(s *vm.Spec) { s.CPUs = 9 }, false},
		"no CPU":              {func(s *vm.Spec) { s.CPUs = 0 }, false},
		"too little memory":   {func(s *vm.Spec) { s.MemoryBytes = 256 << 20 }, false},
		"too much memory":     {func(s *vm.Spec) { s.MemoryBytes = 32 << 30 }, false},
		"partial MiB":         {func(s *vm.Spec) { s.MemoryBytes = 8<<30 + 5 }, false},
		"no disk":             {func(s *vm.Spec) { s.Disks = nil }, false},
		"repeated share tag":  {func(s *vm.Spec) { s.Shares[1].Tag = "macvz-shared" }, false},
		"relative share":      {func(s *vm.Spec) { s.Shares[0].HostPath = "shared" }, false},
		"bad MAC":             {func(s *vm.Spec) { s.NICs[0].MAC = "nope" }, false},
		"tap on vz":           {func(s *vm.Spec) { s.NICs[0].Kind = vm.NICTap }, false},
		"user net on vz":      {func(s *vm.Spec) { s.NICs[0].Kind = vm.NICUser }, false},
		"bridged, no iface":   {func(s *vm.Spec) { s.NICs[0].Kind = vm.NICVmnetBridged }, false},
		"socket, no path":     {func(s *vm.Spec) { s.NICs[0].Kind = vm.NICSocket; s.NICs[0].Device = "sock" }, false},
		"hypervisor forwards": {func(s *vm.Spec) { s.NICs[0].Forwards = []vm.Forward{{Protocol: "tcp", HostPort: 80, GuestPort: 80}} }, false},
	} {
		s := macSpec()
		tc.change(s)
		_, err := NewPlan(s, testLimits)
		if tc.notImpl && !errdefs.IsNotImplemented(err) || !tc.notImpl && !errdefs.IsInvalidArgument(err) {
			t.Errorf("%s: %v", name, err)
		}
	}
}

// TestRestorable: a macOS guest can be restored on macOS 14 and later,
// never on an older host or one whose release is not known (saving
// there would abort the shim); a Linux guest never is, and other guests
// are not vz's.
func TestRestorable(t *testing.T) {
	for _, major := range []int{14, 15, 26} {
		if err := Restorable(macSpec(), major); err != nil {
			t.Errorf("macOS %d: %v", major, err)
		}
		if err := CanSave(major); err != nil {
			t.Errorf("CanSave(%d): %v", major, err)
		}
	}
	for major, host := range map[int]string{13: "macOS 13", 12: "macOS 12", 0: "unknown macOS release"} {
		if err := Restorable(macSpec(), major); !errdefs.IsFailedPrecondition(err) || !strings.Contains(err.Error(), host) || !strings.Contains(err.Error(), "macOS 14") {
			t.Errorf("Restorable on %s: %v", host, err)
		}
		if err := CanSave(major); !errdefs.IsNotImplemented(err) || !strings.Contains(err.Error(), host) {
			t.Errorf("CanSave on %s: %v", host, err)
		}
	}
	if err := unsavable(errors.New("the configuration has a serial port")); !errdefs.IsNotImplemented(err) || !strings.Contains(err.Error(), "serial port") {
		t.Errorf("unsavable: %v", err)
	}
	linux := macSpec()
	linux.Boot = vm.Boot{Kind: vm.BootLinux}
	if err := Restorable(linux, 15); !errdefs.IsFailedPrecondition(err) {
		t.Errorf("linux guest: %v", err)
	}
	other := macSpec()
	other.Boot = vm.Boot{Kind: "efi"}
	if err := Restorable(other, 15); !errdefs.IsNotImplemented(err) {
		t.Errorf("efi guest: %v", err)
	}
	for v, want := range map[string]int{"14.2.1": 14, "13.6\n": 13, "26.0": 26, "15": 15, "": 0, "x.1": 0} {
		if got := MacOSMajor(v); got != want {
			t.Errorf("MacOSMajor(%q) = %d, want %d", v, got, want)
		}
	}
}

// TestPlanMultiDirShare: a share of several directories keeps its
// entries (names, host paths, read-only flags) for one virtiofs device;
// a bad entry is the spec's mistake.
func TestPlanMultiDirShare(t *testing.T) {
	vol := vm.Share{Tag: "macvz-vol", Dirs: []vm.ShareDir{
		{Name: "0", HostPath: "/var/lib/kubelet/pods/u1/volumes/kubernetes.io~secret/s", ReadOnly: true},
		{Name: "1", HostPath: "/var/lib/kubelet/pods/u1/containers"},
	}}
	s := macSpec()
	s.Shares = append(s.Shares, vol)
	p, err := NewPlan(s, testLimits)
	if err != nil {
		t.Fatal(err)
	}
	got := p.Shares[2]
	if got.Tag != "macvz-vol" || got.HostPath != "" || got.ReadOnly || len(got.Dirs) != 2 ||
		got.Dirs[0] != vol.Dirs[0] || got.Dirs[1] != vol.Dirs[1] {
		t.Errorf("multi-directory share planned as %+v", got)
	}

	for name, change := range map[string]func(*vm.Share){
		"repeated name":   func(v *vm.Share) { v.Dirs[1].Name = "0" },
		"empty name":      func(v *vm.Share) { v.Dirs[0].Name = "" },
		"dot name":        func(v *vm.Share) { v.Dirs[0].Name = "." },
		"dotdot name":     func(v *vm.Share) { v.Dirs[0].Name = ".." },
		"path name":       func(v *vm.Share) { v.Dirs[0].Name = "a/b" },
		"space name":      func(v *vm.Share) { v.Dirs[0].Name = "a b" },
		"relative path":   func(v *vm.Share) { v.Dirs[0].HostPath = "pods/u1" },
		"unclean path":    func(v *vm.Share) { v.Dirs[0].HostPath = "/var/lib/kubelet/pods/u1/../u2" },
		"own host path":   func(v *vm.Share) { v.HostPath = "/data" },
		"own read-only":   func(v *vm.Share) { v.ReadOnly = true },
		"own passthrough": func(v *vm.Share) { v.Passthrough = true },
	} {
		v := vm.Share{Tag: vol.Tag, Dirs: append([]vm.ShareDir(nil), vol.Dirs...)}
		change(&v)
		s := macSpec()
		s.Shares = append(s.Shares, v)
		if _, err := NewPlan(s, testLimits); !errdefs.IsInvalidArgument(err) {
			t.Errorf("%s: %v", name, err)
		}
	}
}

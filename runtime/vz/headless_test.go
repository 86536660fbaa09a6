package vz

import (
	"errors"
	"strings"
	"testing"

	"github.com/containerd/errdefs"

	"github.com/macvz/macvz/runtime/vm"
)

// TestHeadlessHint: only the framework's internal error at the start of
// a macOS guest, on a macOS 15+ (or unknown) host whose GUI nobody is
// logged in to, is blamed on the headless host.
func TestHeadlessHint(t *testing.T) {
	for _, tc := range []struct {
		boot       vm.BootKind
		domain     string
		code, uid  int
		major      int
		wantHinted bool
	}{
		{vm.BootMacOS, "VZErrorDomain", 1, 0, 15, true},
		{vm.BootMacOS, "VZErrorDomain", 1, -1, 26, true},
		{vm.BootMacOS, "VZErrorDomain", 1, 0, 0, true},
		{vm.BootMacOS, "VZErrorDomain", 1, 501, 15, false}, // someone is logged in
		{vm.BootMacOS, "VZErrorDomain", 1, 0, 14, false},   // before the keychain requirement
		{vm.BootMacOS, "VZErrorDomain", 6, 0, 15, false},   // the VM limit
		{vm.BootMacOS, "NSPOSIXErrorDomain", 1, 0, 15, false},
		{vm.BootLinux, "VZErrorDomain", 1, 0, 15, false},
	} {
		h := HeadlessHint(tc.boot, tc.domain, tc.code, tc.uid, tc.major)
		if (h != "") != tc.wantHinted {
			t.Errorf("%+v: hint %q", tc, h)
		}
		if h != "" && (!strings.Contains(h, "automatic login") || !strings.Contains(h, "-25308")) {
			t.Errorf("hint says neither what to do nor how to confirm it: %q", h)
		}
	}
	err := headlessError("starting the VM", errors.New("The virtual machine failed to start."), HeadlessHint(vm.BootMacOS, "VZErrorDomain", 1, 0, 15))
	if !errdefs.IsFailedPrecondition(err) || !strings.Contains(err.Error(), "failed to start") || !strings.Contains(err.Error(), "logged in") {
		t.Errorf("headlessError: %v", err)
	}
	if NoConsoleUserWarning(0, 15) == "" || NoConsoleUserWarning(501, 15) != "" || NoConsoleUserWarning(0, 14) != "" {
		t.Error("NoConsoleUserWarning")
	}
}

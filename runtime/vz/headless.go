package vz

import (
	"fmt"

	"github.com/containerd/errdefs"

	"github.com/macvz/macvz/runtime/vm"
)

// vzErrorInternal is VZErrorDomain's code 1, VZErrorInternal: the
// framework's "The virtual machine failed to start."
const vzErrorInternal = 1

// Headless hosts. Since macOS 15.2 the framework's VM service creates a
// key in the keychain of the user who starts a macOS guest; with no one
// logged in to the host's GUI (a Mac mini run as a LaunchDaemon after a
// reboot) that fails with errSecInteractionNotAllowed (-25308) and the
// start fails with nothing but VZErrorInternal. Logging a user in once
// (automatic login) makes it work, even after the screen locks.

// HeadlessHint is what to tell the operator about a start that failed
// with domain/code, for a guest of kind boot, on a host whose console
// (the GUI session) belongs to consoleUID (0 or -1: nobody is logged in)
// and runs macOS release hostMajor; "" when the failure is not that one.
func HeadlessHint(boot vm.BootKind, domain string, code, consoleUID, hostMajor int) string {
	if boot != vm.BootMacOS || domain != "VZErrorDomain" || code != vzErrorInternal || consoleUID > 0 {
		return ""
	}
	if hostMajor > 0 && hostMajor < 15 {
		return ""
	}
	return "nobody is logged in to this Mac's GUI, and Virtualization.framework (macOS 15.2 and later) needs an unlocked login keychain to start a macOS guest " +
		"(errSecInteractionNotAllowed -25308 in `log show --last 5m --predicate 'process == \"com.apple.Virtualization.VirtualMachine\"'`): " +
		"turn on automatic login for a user (System Settings > Users & Groups) and reboot, or log in once through Screen Sharing; see the README's \"Running on a Mac\""
}

// headlessError wraps a failed start with HeadlessHint, as
// errdefs.ErrFailedPrecondition (the host, not the request, is wrong).
func headlessError(what string, err error, hint string) error {
	return fmt.Errorf("vz: %s: %v: %s: %w", what, err, hint, errdefs.ErrFailedPrecondition)
}

// NoConsoleUserWarning is logged once at the start of a vz daemon on a
// host where nobody is logged in to the GUI (consoleUID 0 or -1): the
// first macOS pod would fail. "" when someone is.
func NoConsoleUserWarning(consoleUID, hostMajor int) string {
	if consoleUID > 0 || (hostMajor > 0 && hostMajor < 15) {
		return ""
	}
	return "nobody is logged in to this Mac's GUI: on macOS 15.2 and later Virtualization.framework cannot start macOS guests then (it needs an unlocked login keychain); turn on automatic login for a user and reboot"
}

//go:build darwin

package vz

import (
	"errors"
	"os"
	"syscall"

	"github.com/Code-Hex/vz/v3"

	"github.com/macvz/macvz/runtime/vm"
)

// consoleUID is the user logged in to the GUI: the owner of
// /dev/console, which is root (0) while the login window shows; -1 when
// it cannot be read.
func consoleUID() int {
	fi, err := os.Stat("/dev/console")
	if err != nil {
		return -1
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return -1
	}
	return int(st.Uid)
}

// HostWarnings are what the daemon says once at its start about this
// host's ability to run macOS guests.
func HostWarnings() []string {
	if w := NoConsoleUserWarning(consoleUID(), hostMacOSMajor()); w != "" {
		return []string{w}
	}
	return nil
}

// startError is classify's answer for a start or restore that failed,
// with the headless-host explanation when it is that failure.
func startError(boot vm.BootKind, what string, err error) error {
	var ns *vz.NSError
	if errors.As(err, &ns) {
		if hint := HeadlessHint(boot, ns.Domain, ns.Code, consoleUID(), hostMacOSMajor()); hint != "" {
			return headlessError(what, err, hint)
		}
	}
	return classify(what, err)
}

//go:build darwin

package sandbox

import (
	"strings"

	"golang.org/x/sys/unix"
)

// hostRelease is what a checkpoint's VM state is bound to beyond the
// backend and the architecture: on vz, the macOS version, whose
// Virtualization.framework wrote it (Apple documents no compatibility
// of saved states across releases).
func hostRelease(backend string) string {
	if backend != "vz" {
		return ""
	}
	v, err := unix.Sysctl("kern.osproductversion")
	if err != nil {
		return "unknown"
	}
	return strings.TrimSpace(v)
}

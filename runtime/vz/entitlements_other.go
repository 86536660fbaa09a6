//go:build !darwin

package vz

import (
	"fmt"

	"github.com/containerd/errdefs"
)

// CheckEntitlements: the vz backend exists only on macOS.
func CheckEntitlements(binary string, bridged bool) error {
	return fmt.Errorf("the vz backend runs only on macOS (Virtualization.framework); use backend = \"qemu\" here: %w", errdefs.ErrFailedPrecondition)
}

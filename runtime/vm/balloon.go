package vm

import (
	"fmt"

	"github.com/containerd/errdefs"
)

// MinMemoryTarget is the least memory a balloon leaves a guest: below it
// a Linux guest cannot run its agent.
const MinMemoryTarget = 64 << 20

// CheckMemoryTarget refuses a balloon target outside what a running VM
// of spec can have: a balloon only takes back memory the VM booted with.
func CheckMemoryTarget(spec *Spec, bytes int64) error {
	if bytes < MinMemoryTarget || bytes > spec.MemoryBytes {
		return fmt.Errorf("memory target %d bytes for VM %s: a running VM can have between %d bytes and the %d it booted with: %w",
			bytes, spec.ID, int64(MinMemoryTarget), spec.MemoryBytes, errdefs.ErrInvalidArgument)
	}
	return nil
}

//go:build !linux

package cri

import (
	"fmt"

	"github.com/containerd/errdefs"
)

// bindVolume: macOS has no bind mounts; volumes reach a vz guest as
// directory shares of their own (the vz backend's issue).
func bindVolume(src, dst string, readOnly bool) error {
	return fmt.Errorf("volume %s: host bind mounts are not available on this OS: %w", src, errdefs.ErrNotImplemented)
}

func unmountUnder(dir string) error { return nil }

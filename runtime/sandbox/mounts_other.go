//go:build !linux

package sandbox

import (
	"fmt"
	"os"
	"path/filepath"

	"github.com/containerd/errdefs"
)

// hostBindMounts: macOS has no bind mounts; a vz VM gets its volumes
// through its volume share, set when it boots (volumes.go).
const hostBindMounts = false

// prepareShare makes the sandbox's share directories.
func prepareShare(sbDir string) error {
	for _, d := range []string{sharedDir, sharedRODir} {
		if err := os.MkdirAll(filepath.Join(sbDir, d), 0o700); err != nil {
			return err
		}
	}
	return nil
}

// bindVolume: macOS has no bind mounts (BindVolumes uses the volume
// share instead: volumes.go).
func bindVolume(sbDir, cid string, i int, src string, readOnly bool) error {
	return fmt.Errorf("volume %s: host bind mounts are not available on this OS: %w", src, errdefs.ErrNotImplemented)
}

func unmountUnder(base, rel string) error { return nil }

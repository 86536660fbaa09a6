//go:build !linux

package memvol

import (
	"fmt"
	"os"
	"path/filepath"
)

// mountTmpfs: macOS has no tmpfs; the volume stays the plain directory
// kubelet made (checked to be one, not a symlink).
func mountTmpfs(root, rel string, size int64) (bool, error) {
	fi, err := os.Lstat(filepath.Join(root, rel))
	if err != nil {
		return false, err
	}
	if !fi.IsDir() {
		return false, fmt.Errorf("%s: %w", filepath.Join(root, rel), errNotDir)
	}
	return false, nil
}

func unmountTmpfs(root, rel string) (bool, error) { return false, nil }

func listTmpfs() []string { return nil }

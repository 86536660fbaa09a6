//go:build !linux && !darwin

package vmimage

import "os"

// openDirect: no direct I/O here; disks are written through the cache.
func openDirect(*os.File) *os.File { return nil }

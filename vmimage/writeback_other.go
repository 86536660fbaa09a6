//go:build !linux

package vmimage

import "os"

// startWriteback has no portable equivalent of Linux's sync_file_range:
// elsewhere the final Sync writes the whole disk.
func startWriteback(*os.File, int64, int64) {}

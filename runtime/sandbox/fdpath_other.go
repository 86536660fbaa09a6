//go:build !linux

package sandbox

import (
	"os"
	"strconv"
)

// fdPath names an open file by its descriptor: opening /dev/fd/N on
// macOS duplicates descriptor N, whatever its name now leads to.
func fdPath(f *os.File) string { return "/dev/fd/" + strconv.Itoa(int(f.Fd())) }

package sandbox

import (
	"os"
	"strconv"
)

// fdPath names an open file by its descriptor: opening it opens that
// file again, whatever its name now leads to.
func fdPath(f *os.File) string { return "/proc/self/fd/" + strconv.Itoa(int(f.Fd())) }

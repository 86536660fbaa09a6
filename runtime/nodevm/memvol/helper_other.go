//go:build !linux

package memvol

import (
	"fmt"
	"os"
)

// Main: the helper runs in the node VM, a Linux guest.
func Main(name string, args []string) int {
	fmt.Fprintf(os.Stderr, "%s: macvz's mount helper runs only in a Linux node VM\n", name)
	return 1
}

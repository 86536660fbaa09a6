//go:build !linux

package exechelper

import (
	"fmt"
	"os"
)

// Run: macOS has no capabilities, no_new_privs or mount namespaces; its
// processes run as they are, without the helper.
func Run(args []string) {
	fmt.Fprintln(os.Stderr, "macvz-agent: the exec helper is Linux-only")
	os.Exit(127)
}

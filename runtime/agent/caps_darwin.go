package agent

import (
	"fmt"
	"os"
)

const execHelperArg = "__macvz_exec"

// helperSpec: macOS has no capabilities, no_new_privs or mount
// namespaces; processes run as they are.
type helperSpec struct {
	restrictCaps, noNewPrivs, newMountNS, readOnlyRoot bool
	caps, readonlyPaths, maskedPaths                   []string
	uid, gid                                           uint32
	groups                                             []uint32
	joinMountNS                                        int
	newPidNS                                           bool
	seccomp                                            *compiledSeccomp
}

func helperArgs(path string, argv []string, h helperSpec) ([]string, error) {
	return nil, fmt.Errorf("capability, no_new_privs and mount namespace settings are Linux-only")
}

func execHelper(args []string) {
	fmt.Fprintln(os.Stderr, "macvz-agent: the exec helper is Linux-only")
	os.Exit(127)
}

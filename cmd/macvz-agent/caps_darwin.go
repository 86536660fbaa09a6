package main

import (
	"fmt"
	"os"
)

const execHelperArg = "__macvz_exec"

// helperArgs: macOS has no capabilities or no_new_privs; processes run as
// they are.
func helperArgs(path string, argv []string, restrict bool, caps []string, nnp bool, uid, gid uint32, groups []uint32) ([]string, error) {
	return nil, fmt.Errorf("capability and no_new_privs settings are Linux-only")
}

func execHelper(args []string) {
	fmt.Fprintln(os.Stderr, "macvz-agent: the exec helper is Linux-only")
	os.Exit(127)
}

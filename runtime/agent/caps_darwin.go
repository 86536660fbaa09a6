package agent

import (
	"fmt"

	"github.com/macvz/macvz/runtime/agent/exechelper"
)

const execHelperArg = exechelper.Marker

// helperSpec: macOS has no capabilities, no_new_privs or mount
// namespaces; processes run as they are.
type helperSpec = exechelper.Spec

func helperArgs(path string, argv []string, h helperSpec) ([]string, error) {
	return nil, fmt.Errorf("capability, no_new_privs and mount namespace settings are Linux-only")
}

func execHelper(args []string) { exechelper.Run(args) }

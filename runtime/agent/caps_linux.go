package agent

import "github.com/macvz/macvz/runtime/agent/exechelper"

// execHelperArg is argv[1] of the exec helper, a process's last step
// before exec: Go cannot run code in a forked child, and bounding-set
// drops must happen as root, before the uid switch. The helper is
// cmd/macvz-exec when the guest has it (see loadExecHelper), else the
// agent re-executed.
const execHelperArg = exechelper.Marker

// capNames maps capability names to numbers (linux/capability.h).
var capNames = exechelper.CapNames

// helperSpec is what the exec helper does before it execs the process.
type helperSpec = exechelper.Spec

// helperArgs is the argv that runs path/argv through the exec helper.
func helperArgs(path string, argv []string, h helperSpec) ([]string, error) {
	a, err := exechelper.Args(path, argv, h)
	if err != nil {
		return nil, err
	}
	return append([]string{"macvz-agent"}, a...), nil
}

// execHelper is the agent re-executed as the exec helper. It never
// returns.
func execHelper(args []string) { exechelper.Run(args) }

package agent

import (
	"fmt"

	api "github.com/macvz/macvz/runtime/agentapi"
)

// seccompOf: macOS has no seccomp; a process asking for a profile is
// refused rather than run unconfined.
func seccompOf(req *api.CreateProcessRequest) (*compiledSeccomp, error) {
	if req.SeccompRuntimeDefault || len(req.Seccomp) > 0 {
		return nil, fmt.Errorf("a seccomp profile asks for Linux's syscall filter, which macOS does not have")
	}
	return nil, nil
}

package agent

import (
	"encoding/json"
	"fmt"
	"runtime"

	"github.com/elastic/go-seccomp-bpf/arch"
	"github.com/moby/profiles/seccomp"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	api "github.com/macvz/macvz/runtime/agentapi"
)

// seccompOf compiles the process's seccomp profile for this guest, or
// returns nil when it runs unconfined. RuntimeDefault is the default
// profile of the container runtimes (Docker's, which containerd's copies),
// made here, where the architecture and the kernel are known; its
// capability-gated rules follow the process's capabilities.
func seccompOf(req *api.CreateProcessRequest) (*compiledSeccomp, error) {
	var prof *specs.LinuxSeccomp
	switch {
	case req.SeccompRuntimeDefault:
		bounding := req.Capabilities
		if !req.RestrictCapabilities {
			bounding = allCapabilities()
		}
		p, err := seccomp.GetDefaultProfile(&specs.Spec{Process: &specs.Process{Capabilities: &specs.LinuxCapabilities{Bounding: bounding}}})
		if err != nil {
			return nil, fmt.Errorf("the default seccomp profile: %w", err)
		}
		prof = p
	case len(req.Seccomp) > 0:
		prof = &specs.LinuxSeccomp{}
		if err := json.Unmarshal(req.Seccomp, prof); err != nil {
			return nil, fmt.Errorf("seccomp profile: %w", err)
		}
	default:
		return nil, nil
	}
	ai, err := arch.GetInfo(runtime.GOARCH)
	if err != nil {
		return nil, err
	}
	c, err := compileSeccomp(prof, ai)
	if err != nil {
		return nil, err
	}
	return &c, nil
}

func allCapabilities() []string {
	out := make([]string, 0, len(capNames))
	for n := range capNames {
		out = append(out, n)
	}
	return out
}

package agent

import (
	"encoding/json"
	"fmt"
	"runtime"
	"unsafe"

	"github.com/elastic/go-seccomp-bpf/arch"
	"github.com/moby/profiles/seccomp"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/net/bpf"
	"golang.org/x/sys/unix"

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

// installSeccomp loads a filter on the calling thread, which then execs:
// the filter passes to the new program (no TSYNC: the helper's other
// threads die with the exec).
func installSeccomp(insns []bpf.RawInstruction, flags uint) error {
	filter := make([]unix.SockFilter, len(insns))
	for i, in := range insns {
		filter[i] = unix.SockFilter{Code: in.Op, Jt: in.Jt, Jf: in.Jf, K: in.K}
	}
	prog := unix.SockFprog{Len: uint16(len(filter)), Filter: &filter[0]}
	_, _, e := unix.RawSyscall(unix.SYS_SECCOMP, unix.SECCOMP_SET_MODE_FILTER, uintptr(flags), uintptr(unsafe.Pointer(&prog)))
	runtime.KeepAlive(filter)
	if e != 0 {
		return e
	}
	return nil
}

package cri

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/containerd/errdefs"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/macvz/macvz/runtime/agentapi"
	"github.com/macvz/macvz/runtime/store"
)

// A container's isolation inside a Linux guest, as Kata's agent gives it:
// a seccomp profile, its own PID namespace, masked and read-only paths in
// a mount namespace of its own, and a memory cgroup. The agent applies
// them; the daemon decides them from the CRI config and reads Localhost
// seccomp profiles, which are files on the node.

// seccompProfile is the seccomp a container asks for: nil = unconfined
// (no profile, Unconfined, or privileged, whose profile containerd
// ignores too), runtimeDefault, or a Localhost profile read and parsed
// from the node.
func seccompProfile(sc *runtimeapi.LinuxContainerSecurityContext) (prof []byte, runtimeDefault bool, err error) {
	sp := sc.GetSeccomp()
	if sp == nil || sc.GetPrivileged() {
		return nil, false, nil
	}
	switch sp.GetProfileType() {
	case runtimeapi.SecurityProfile_Unconfined:
		return nil, false, nil
	case runtimeapi.SecurityProfile_RuntimeDefault:
		return nil, true, nil
	case runtimeapi.SecurityProfile_Localhost:
		ref := sp.GetLocalhostRef()
		if !filepath.IsAbs(ref) {
			return nil, false, fmt.Errorf("seccomp localhost_ref %q must be an absolute path on the node: %w", ref, errdefs.ErrInvalidArgument)
		}
		b, err := os.ReadFile(ref)
		if err != nil {
			return nil, false, fmt.Errorf("seccomp profile %s: %v: %w", ref, err, errdefs.ErrNotFound)
		}
		var p specs.LinuxSeccomp
		if err := json.Unmarshal(b, &p); err != nil {
			return nil, false, fmt.Errorf("seccomp profile %s is not an OCI seccomp profile (JSON): %v: %w", ref, err, errdefs.ErrInvalidArgument)
		}
		if p.DefaultAction == "" {
			return nil, false, fmt.Errorf("seccomp profile %s has no defaultAction: %w", ref, errdefs.ErrInvalidArgument)
		}
		// Sent re-encoded: only what the OCI type holds reaches the guest.
		out, err := json.Marshal(&p)
		return out, false, err
	}
	return nil, false, fmt.Errorf("seccomp profile type %v is unknown: %w", sp.GetProfileType(), errdefs.ErrInvalidArgument)
}

// applyIsolation sets a Linux guest's container isolation on the main
// process's request.
func applyIsolation(creq *agentapi.CreateProcessRequest, cfg *runtimeapi.ContainerConfig) error {
	sc := cfg.GetLinux().GetSecurityContext()
	prof, def, err := seccompProfile(sc)
	if err != nil {
		return err
	}
	creq.Seccomp, creq.SeccompRuntimeDefault = prof, def
	creq.MaskedPaths = sc.GetMaskedPaths()
	switch ns := sc.GetNamespaceOptions(); ns.GetPid() {
	case runtimeapi.NamespaceMode_CONTAINER:
		creq.OwnPidNamespace = true
	case runtimeapi.NamespaceMode_TARGET:
		if ns.GetTargetId() == "" {
			return fmt.Errorf("PID namespace mode TARGET needs a target_id: %w", errdefs.ErrInvalidArgument)
		}
		creq.PidNamespaceOf = ns.GetTargetId()
	}
	// NODE (hostPID) stays in the VM's namespace, as POD does: the
	// node's processes are outside the VM.
	if creq.OwnPidNamespace || creq.PidNamespaceOf != "" || len(creq.MaskedPaths) > 0 {
		creq.OwnMountNamespace = true
	}
	applyLimits(creq, cfg.GetLinux().GetResources())
	return nil
}

// applyLimits puts a container's memory limit and CPU limit on its main
// process's request. A CPU limit is a CFS quota on the container's
// cgroup in the guest (the VM's vCPUs, rounded up from the pod's limits,
// are the bound of them all), as runc sets it on the node.
func applyLimits(creq *agentapi.CreateProcessRequest, res *runtimeapi.LinuxContainerResources) {
	creq.MemoryLimitBytes = res.GetMemoryLimitInBytes()
	creq.CpuQuotaUs, creq.CpuPeriodUs = 0, 0
	if q := res.GetCpuQuota(); q > 0 {
		creq.CpuQuotaUs, creq.CpuPeriodUs = max(q, 1000), res.GetCpuPeriod()
	}
}

// checkMacOSIsolation refuses, for a container of a macOS guest, the
// isolation only Linux has. What kubelet sends every container is not
// refused: its default masked and read-only paths are all under /proc
// and /sys, which macOS does not have (nothing there to hide), and a
// memory limit that sizes the VM is honoured by the VM itself.
func checkMacOSIsolation(cfg *runtimeapi.ContainerConfig, sb store.Sandbox, imageMinMemory int64) error {
	name := cfg.GetMetadata().GetName()
	sc := cfg.GetLinux().GetSecurityContext()
	if t := sc.GetSeccomp(); t != nil && !sc.GetPrivileged() && t.GetProfileType() != runtimeapi.SecurityProfile_Unconfined {
		return fmt.Errorf("container %q asks for seccomp profile %v: macOS has no seccomp (a Linux syscall filter); leave seccomp unset or Unconfined for a macOS pod: %w",
			name, t.GetProfileType(), errdefs.ErrNotImplemented)
	}
	switch sc.GetNamespaceOptions().GetPid() {
	case runtimeapi.NamespaceMode_CONTAINER, runtimeapi.NamespaceMode_TARGET:
		return fmt.Errorf("container %q asks for a PID namespace of its own (%v): macOS has no PID namespaces, a macOS pod's processes share its VM: %w",
			name, sc.GetNamespaceOptions().GetPid(), errdefs.ErrNotImplemented)
	}
	for _, p := range sc.GetMaskedPaths() {
		if !underProcOrSys(p) {
			return fmt.Errorf("container %q masks %s: macOS has no mount namespaces to hide a path from one container: %w", name, p, errdefs.ErrNotImplemented)
		}
	}
	for _, p := range sc.GetReadonlyPaths() {
		if !underProcOrSys(p) {
			return fmt.Errorf("container %q makes %s read-only: macOS has no mount namespaces to do so for one container: %w", name, p, errdefs.ErrNotImplemented)
		}
	}
	if lim := cfg.GetLinux().GetResources().GetMemoryLimitInBytes(); lim > 0 {
		vm := max(store.SpecOf(sb).Resources.MemoryBytes, imageMinMemory)
		if lim < vm {
			return fmt.Errorf("container %q has a memory limit of %d bytes, below its macOS VM's %d: macOS has no per-process memory cgroups, so a macOS container's limit is its VM's size: %w",
				name, lim, vm, errdefs.ErrNotImplemented)
		}
	}
	return nil
}

func underProcOrSys(p string) bool {
	p = filepath.Clean(p)
	return p == "/proc" || p == "/sys" || strings.HasPrefix(p, "/proc/") || strings.HasPrefix(p, "/sys/")
}

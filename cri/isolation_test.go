package cri

import (
	"encoding/json"
	"os"
	"path/filepath"
	"testing"

	"github.com/containerd/errdefs"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/macvz/macvz/runtime/agentapi"
	"github.com/macvz/macvz/runtime/store"
)

func TestSeccompProfileOf(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "block-chmod.json")
	os.WriteFile(good, []byte(`{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["chmod"], "action": "SCMP_ACT_ERRNO"}], "comment": "dropped"}`), 0o600)
	broken := filepath.Join(dir, "broken.json")
	os.WriteFile(broken, []byte(`{"defaultAction": `), 0o600)
	noDefault := filepath.Join(dir, "nodefault.json")
	os.WriteFile(noDefault, []byte(`{"syscalls": []}`), 0o600)
	sc := func(p *runtimeapi.SecurityProfile, privileged bool) *runtimeapi.LinuxContainerSecurityContext {
		return &runtimeapi.LinuxContainerSecurityContext{Seccomp: p, Privileged: privileged}
	}
	local := func(ref string) *runtimeapi.SecurityProfile {
		return &runtimeapi.SecurityProfile{ProfileType: runtimeapi.SecurityProfile_Localhost, LocalhostRef: ref}
	}
	if p, def, err := seccompProfile(sc(nil, false)); p != nil || def || err != nil {
		t.Errorf("no profile: %q %v %v, want unconfined", p, def, err)
	}
	if p, def, err := seccompProfile(sc(&runtimeapi.SecurityProfile{ProfileType: runtimeapi.SecurityProfile_Unconfined}, false)); p != nil || def || err != nil {
		t.Errorf("Unconfined: %q %v %v", p, def, err)
	}
	if _, def, err := seccompProfile(sc(&runtimeapi.SecurityProfile{}, false)); !def || err != nil {
		t.Errorf("RuntimeDefault: %v %v", def, err)
	}
	if p, def, err := seccompProfile(sc(local(good), true)); p != nil || def || err != nil {
		t.Errorf("privileged: %q %v %v, want unconfined", p, def, err)
	}
	p, _, err := seccompProfile(sc(local(good), false))
	if err != nil {
		t.Fatal(err)
	}
	var back specs.LinuxSeccomp
	if err := json.Unmarshal(p, &back); err != nil || back.DefaultAction != specs.ActAllow || len(back.Syscalls) != 1 || back.Syscalls[0].Names[0] != "chmod" {
		t.Errorf("Localhost profile sent as %s (%v)", p, err)
	}
	for _, tc := range []struct {
		ref  string
		want func(error) bool
	}{
		{"relative.json", errdefs.IsInvalidArgument},
		{filepath.Join(dir, "missing.json"), errdefs.IsNotFound},
		{broken, errdefs.IsInvalidArgument},
		{noDefault, errdefs.IsInvalidArgument},
	} {
		if _, _, err := seccompProfile(sc(local(tc.ref), false)); !tc.want(err) {
			t.Errorf("%s: %v", tc.ref, err)
		}
	}
}

func TestApplyIsolation(t *testing.T) {
	cfg := &runtimeapi.ContainerConfig{Linux: &runtimeapi.LinuxContainerConfig{
		Resources: &runtimeapi.LinuxContainerResources{MemoryLimitInBytes: 15 << 20},
		SecurityContext: &runtimeapi.LinuxContainerSecurityContext{
			MaskedPaths:      []string{"/bin/ls"},
			NamespaceOptions: &runtimeapi.NamespaceOption{Pid: runtimeapi.NamespaceMode_CONTAINER},
			Seccomp:          &runtimeapi.SecurityProfile{ProfileType: runtimeapi.SecurityProfile_RuntimeDefault},
		},
	}}
	var req agentapi.CreateProcessRequest
	if err := applyIsolation(&req, cfg); err != nil {
		t.Fatal(err)
	}
	if !req.OwnPidNamespace || !req.OwnMountNamespace || len(req.MaskedPaths) != 1 || !req.SeccompRuntimeDefault || req.MemoryLimitBytes != 15<<20 {
		t.Errorf("request %+v", &req)
	}
	// POD mode (kubelet's) changes nothing.
	req = agentapi.CreateProcessRequest{}
	if err := applyIsolation(&req, &runtimeapi.ContainerConfig{}); err != nil || req.OwnPidNamespace || req.OwnMountNamespace || req.PidNamespaceOf != "" {
		t.Errorf("POD mode: %+v %v", &req, err)
	}
	cfg.Linux.SecurityContext.NamespaceOptions = &runtimeapi.NamespaceOption{Pid: runtimeapi.NamespaceMode_TARGET, TargetId: "abc"}
	req = agentapi.CreateProcessRequest{}
	if err := applyIsolation(&req, cfg); err != nil || req.PidNamespaceOf != "abc" || req.OwnPidNamespace {
		t.Errorf("TARGET: %+v %v", &req, err)
	}
	cfg.Linux.SecurityContext.NamespaceOptions.TargetId = ""
	if err := applyIsolation(&req, cfg); !errdefs.IsInvalidArgument(err) {
		t.Errorf("TARGET without a target: %v", err)
	}
}

func TestMacOSIsolation(t *testing.T) {
	sb := store.Sandbox{}
	// What kubelet sends a non-privileged container by default passes.
	kubeletDefault := &runtimeapi.ContainerConfig{
		Metadata: &runtimeapi.ContainerMetadata{Name: "c"},
		Linux: &runtimeapi.LinuxContainerConfig{SecurityContext: &runtimeapi.LinuxContainerSecurityContext{
			MaskedPaths:   []string{"/proc/asound", "/proc/acpi", "/proc/kcore", "/proc/keys", "/proc/latency_stats", "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/proc/scsi", "/sys/firmware", "/sys/devices/virtual/powercap"},
			ReadonlyPaths: []string{"/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"},
			Seccomp:       &runtimeapi.SecurityProfile{ProfileType: runtimeapi.SecurityProfile_Unconfined},
		}},
	}
	if err := checkMacOSIsolation(kubeletDefault, sb, 4<<30); err != nil {
		t.Errorf("kubelet's defaults refused: %v", err)
	}
	refused := []func(*runtimeapi.ContainerConfig){
		func(c *runtimeapi.ContainerConfig) { c.Linux.SecurityContext.Seccomp = &runtimeapi.SecurityProfile{} },
		func(c *runtimeapi.ContainerConfig) {
			c.Linux.SecurityContext.NamespaceOptions = &runtimeapi.NamespaceOption{Pid: runtimeapi.NamespaceMode_CONTAINER}
		},
		func(c *runtimeapi.ContainerConfig) {
			c.Linux.SecurityContext.MaskedPaths = []string{"/Users/admin/secret"}
		},
		func(c *runtimeapi.ContainerConfig) { c.Linux.SecurityContext.ReadonlyPaths = []string{"/tmp"} },
		func(c *runtimeapi.ContainerConfig) {
			c.Linux.Resources = &runtimeapi.LinuxContainerResources{MemoryLimitInBytes: 1 << 30}
		},
	}
	for i, f := range refused {
		c := &runtimeapi.ContainerConfig{Metadata: kubeletDefault.Metadata, Linux: &runtimeapi.LinuxContainerConfig{SecurityContext: &runtimeapi.LinuxContainerSecurityContext{}}}
		f(c)
		if err := checkMacOSIsolation(c, sb, 4<<30); !errdefs.IsNotImplemented(err) {
			t.Errorf("case %d: %v, want NotImplemented", i, err)
		}
	}
	// A limit that is the VM's size is the VM's own.
	c := &runtimeapi.ContainerConfig{Metadata: kubeletDefault.Metadata, Linux: &runtimeapi.LinuxContainerConfig{Resources: &runtimeapi.LinuxContainerResources{MemoryLimitInBytes: 8 << 30}}}
	if err := checkMacOSIsolation(c, sb, 4<<30); err != nil {
		t.Errorf("a limit above the image's minimum: %v", err)
	}
	// Privileged: the profile is ignored, as on Linux.
	c = &runtimeapi.ContainerConfig{Metadata: kubeletDefault.Metadata, Linux: &runtimeapi.LinuxContainerConfig{SecurityContext: &runtimeapi.LinuxContainerSecurityContext{Privileged: true, Seccomp: &runtimeapi.SecurityProfile{}}}}
	if err := checkMacOSIsolation(c, sb, 0); err != nil {
		t.Errorf("privileged: %v", err)
	}
}

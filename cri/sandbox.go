package cri

import (
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"time"

	"github.com/containerd/errdefs"
	"google.golang.org/protobuf/proto"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/macvz/macvz/cri/config"
	"github.com/macvz/macvz/runtime/store"
)

// annotationVMImage names the VM image a pod boots at RunPodSandbox,
// before any container exists; honoured only for runtime handlers whose
// configuration sets allow_vm_image_annotation.
const annotationVMImage = "macvz.io/vm-image"

// annotationAgent: "none" says the pod's VM image has no macvz agent
// (config.AgentNone); "required" or absent, that it has one.
const annotationAgent = "macvz.io/agent"

// agentless says whether a sandbox's VM runs without an agent: its
// handler's agent setting, or the pod's annotation (which may only turn
// the agent off: it takes nothing from the pod but exec and probes).
func agentless(h config.RuntimeHandler, cfg *runtimeapi.PodSandboxConfig) (bool, error) {
	switch a := cfg.GetAnnotations()[annotationAgent]; a {
	case config.AgentNone:
		return true, nil
	case "", config.AgentRequired:
		return h.Agent == config.AgentNone, nil
	default:
		return false, fmt.Errorf("pod annotation %s=%q: must be %q (the VM image has no macvz agent) or %q: %w",
			annotationAgent, a, config.AgentNone, config.AgentRequired, errdefs.ErrInvalidArgument)
	}
}

// sandboxName is containerd's unique sandbox name.
func sandboxName(md *runtimeapi.PodSandboxMetadata) string {
	return strings.Join([]string{md.GetName(), md.GetNamespace(), md.GetUid(), strconv.FormatUint(uint64(md.GetAttempt()), 10)}, "_")
}

// containerName is containerd's unique container name.
func containerName(md *runtimeapi.ContainerMetadata, sb *runtimeapi.PodSandboxMetadata) string {
	return strings.Join([]string{md.GetName(), sb.GetName(), sb.GetNamespace(), sb.GetUid(), strconv.FormatUint(uint64(md.GetAttempt()), 10)}, "_")
}

func podConfig(sb store.Sandbox) (*runtimeapi.PodSandboxConfig, error) {
	var c runtimeapi.PodSandboxConfig
	if err := proto.Unmarshal(sb.Config, &c); err != nil {
		return nil, fmt.Errorf("sandbox %s: stored config: %w", sb.ID, err)
	}
	return &c, nil
}

func ctrConfig(c store.Container) (*runtimeapi.ContainerConfig, error) {
	var cc runtimeapi.ContainerConfig
	if err := proto.Unmarshal(c.Config, &cc); err != nil {
		return nil, fmt.Errorf("container %s: stored config: %w", c.ID, err)
	}
	return &cc, nil
}

func sbLog(id string) *slog.Logger { return slog.With("sandbox", id) }

func ctrLog(c store.Container) *slog.Logger {
	return slog.With("sandbox", c.SandboxID, "container", c.ID)
}

func criSandboxState(st store.SandboxState) runtimeapi.PodSandboxState {
	if st == store.SandboxReady {
		return runtimeapi.PodSandboxState_SANDBOX_READY
	}
	return runtimeapi.PodSandboxState_SANDBOX_NOTREADY
}

func criContainerState(st store.ContainerState) runtimeapi.ContainerState {
	switch st {
	case store.ContainerCreated:
		return runtimeapi.ContainerState_CONTAINER_CREATED
	case store.ContainerRunning:
		return runtimeapi.ContainerState_CONTAINER_RUNNING
	case store.ContainerExited:
		return runtimeapi.ContainerState_CONTAINER_EXITED
	}
	return runtimeapi.ContainerState_CONTAINER_UNKNOWN
}

// validateSandboxConfig checks what RunPodSandbox needs before anything
// is created.
func validateSandboxConfig(c *runtimeapi.PodSandboxConfig) error {
	md := c.GetMetadata()
	if md == nil {
		return fmt.Errorf("sandbox config has no metadata: %w", errdefs.ErrInvalidArgument)
	}
	var missing []string
	if md.GetName() == "" {
		missing = append(missing, "name")
	}
	if md.GetNamespace() == "" {
		missing = append(missing, "namespace")
	}
	if md.GetUid() == "" {
		missing = append(missing, "uid")
	}
	if len(missing) > 0 {
		return fmt.Errorf("sandbox metadata lacks %s: %w", strings.Join(missing, ", "), errdefs.ErrInvalidArgument)
	}
	return nil
}

func randomHex(n int) string { return store.NewID()[:2*n] }

func nowNano() int64 { return time.Now().UnixNano() }

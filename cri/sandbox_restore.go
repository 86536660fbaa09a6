package cri

import (
	"context"
	"fmt"
	"slices"
	"time"

	"github.com/containerd/errdefs"
	"google.golang.org/protobuf/proto"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/macvz/macvz/runtime/nodevm"
	"github.com/macvz/macvz/runtime/sandbox"
	"github.com/macvz/macvz/runtime/store"
)

// RestorePod makes a new sandbox from a CheckpointPod directory, under
// the new pod's config (its name, hostname, network: the restored guest
// gets the new identity), with the checkpoint's containers in CREATED
// state. The VM resumes from the checkpoint at the first StartContainer;
// each restored container's processes stay stopped until its own
// StartContainer continues them. The checkpoint directory is only read.
func (s *Service) RestorePod(ctx context.Context, r *runtimeapi.RestorePodRequest) (*runtimeapi.RestorePodResponse, error) {
	cfg := r.GetConfig()
	if err := validateSandboxConfig(cfg); err != nil {
		return nil, err
	}
	if err := validateResources(cfg.GetLinux().GetResources()); err != nil {
		return nil, err
	}
	if err := noOptions("RestorePod", r.GetOptions()); err != nil {
		return nil, err
	}
	if nodevm.IsNode(cfg.GetLabels()) {
		return nil, fmt.Errorf("the node VM cannot be restored from a checkpoint: %w", errdefs.ErrInvalidArgument)
	}
	h, err := s.handler(r.GetRuntimeHandler())
	if err != nil {
		return nil, err
	}
	noAgent, err := agentless(h.RuntimeHandler, cfg)
	if err != nil {
		return nil, err
	}
	if noAgent {
		return nil, fmt.Errorf("a pod without the macvz agent cannot be restored from a checkpoint: %w", errdefs.ErrInvalidArgument)
	}
	if err := s.checkVolumeDirs(r.GetRuntimeHandler(), cfg); err != nil {
		return nil, err
	}
	cp, err := s.ctl.ReadCheckpoint(r.GetCheckpointPath())
	if err != nil {
		return nil, err
	}
	m := &cp.Manifest
	img, err := s.images.VMImage(ctx, m.ImageID)
	if err != nil {
		return nil, fmt.Errorf("the checkpoint's VM image %s (%s) is not on this node: %w", m.Image, m.ImageID, err)
	}
	if hi, err := handlerImage(h, cfg); err != nil {
		return nil, err
	} else if hi != "" {
		vi, err := s.images.VMImage(ctx, hi)
		if err != nil {
			return nil, err
		}
		if vi.Content != img.Content {
			return nil, fmt.Errorf("runtime handler %q boots VM image %s, not the checkpoint's %s: %w", h.name, hi, m.Image, errdefs.ErrFailedPrecondition)
		}
	}
	raw, err := proto.Marshal(cfg)
	if err != nil {
		return nil, err
	}
	ctrs, err := s.restoredContainers(ctx, cfg, r.GetContainerConfigs(), m.Containers)
	if err != nil {
		return nil, err
	}
	spec := sandboxSpec(cfg)
	sb, err := s.ctl.Restore(ctx, store.Sandbox{
		ID:      store.NewID(),
		Name:    sandboxName(cfg.GetMetadata()),
		Config:  raw,
		Spec:    spec,
		Handler: r.GetRuntimeHandler(),
		VMImage: img.Image.ID(), VMContent: img.Content,
	}, cp, &img, ctrs)
	if err != nil {
		return nil, err
	}
	resp := &runtimeapi.RestorePodResponse{PodSandboxId: sb.ID}
	for _, c := range ctrs {
		resp.RestoredContainers = append(resp.RestoredContainers, &runtimeapi.RestoredContainer{Name: mustConfig(c).GetMetadata().GetName(), ContainerId: c.ID})
	}
	sbLog(sb.ID).Info("sandbox restored from a checkpoint", "name", sb.Name, "checkpoint", cp.Dir, "from", m.Sandbox.ID, "containers", len(ctrs))
	s.containerEvent(runtimeapi.ContainerEventType_CONTAINER_CREATED_EVENT, sb.ID, sb.ID)
	s.containerEvent(runtimeapi.ContainerEventType_CONTAINER_STARTED_EVENT, sb.ID, sb.ID)
	for _, c := range ctrs {
		s.containerEvent(runtimeapi.ContainerEventType_CONTAINER_CREATED_EVENT, sb.ID, c.ID)
	}
	return resp, nil
}

// restoredContainers matches the request's container configs to the
// checkpoint's containers by metadata name (exactly the same set) and
// makes their records: the checkpoint's IDs (the guest knows their
// processes by them), the new configs, images that must be the ones
// checkpointed.
func (s *Service) restoredContainers(ctx context.Context, pod *runtimeapi.PodSandboxConfig, cfgs []*runtimeapi.ContainerConfig, cps []sandbox.CheckpointContainer) ([]store.Container, error) {
	if len(cfgs) == 0 {
		return nil, fmt.Errorf("RestorePod needs container_configs for the checkpoint's containers: %w", errdefs.ErrInvalidArgument)
	}
	byName := map[string]*runtimeapi.ContainerConfig{}
	for _, c := range cfgs {
		n := c.GetMetadata().GetName()
		if n == "" {
			return nil, fmt.Errorf("a container config lacks metadata.name: %w", errdefs.ErrInvalidArgument)
		}
		if byName[n] != nil {
			return nil, fmt.Errorf("container %q is configured twice: %w", n, errdefs.ErrInvalidArgument)
		}
		byName[n] = c
	}
	if len(byName) != len(cps) {
		return nil, fmt.Errorf("the checkpoint has %d containers, the request configures %d: the names must be the same set: %w", len(cps), len(byName), errdefs.ErrInvalidArgument)
	}
	var out []store.Container
	for _, cp := range cps {
		old := &runtimeapi.ContainerConfig{}
		if err := proto.Unmarshal(cp.Config, old); err != nil {
			return nil, fmt.Errorf("the checkpoint's config of container %s: %v: %w", cp.ID, err, errdefs.ErrInvalidArgument)
		}
		name := old.GetMetadata().GetName()
		cfg := byName[name]
		if cfg == nil {
			return nil, fmt.Errorf("the checkpoint's container %q has no config in the request: %w", name, errdefs.ErrInvalidArgument)
		}
		if err := validateMounts(cfg.GetMounts()); err != nil {
			return nil, err
		}
		if len(cfg.GetMounts()) > 0 {
			return nil, fmt.Errorf("container %q has volumes: a restored VM's processes cannot get volumes they were not checkpointed with: %w", name, errdefs.ErrFailedPrecondition)
		}
		img, err := s.images.VMImage(ctx, cfg.GetImage().GetImage())
		if err != nil {
			return nil, fmt.Errorf("container %q: %w", name, err)
		}
		if img.Image.ID() != cp.ImageID {
			return nil, fmt.Errorf("container %q's image %s is not the checkpointed one (%s): %w", name, cfg.GetImage().GetImage(), cp.ImageRef, errdefs.ErrFailedPrecondition)
		}
		// The process is the checkpoint's: what describes it must match.
		if !slices.Equal(cfg.GetCommand(), old.GetCommand()) || !slices.Equal(cfg.GetArgs(), old.GetArgs()) || cfg.GetWorkingDir() != old.GetWorkingDir() || cfg.GetTty() != old.GetTty() {
			return nil, fmt.Errorf("container %q's command, args, working directory or tty differ from the checkpointed process's: %w", name, errdefs.ErrFailedPrecondition)
		}
		logPath, err := containerLogPath(pod.GetLogDirectory(), cfg.GetLogPath())
		if err != nil {
			return nil, err
		}
		raw, err := proto.Marshal(cfg)
		if err != nil {
			return nil, err
		}
		out = append(out, store.Container{
			ID: cp.ID, Name: containerName(cfg.GetMetadata(), pod.GetMetadata()), Config: raw,
			ImageRef: cfg.GetImage().GetImage(), ImageID: cp.ImageID, IsVM: cp.IsVM,
			CreatedAt: time.Now(), LogPath: logPath,
		})
	}
	return out, nil
}

// mustConfig is a record's config, which the verb that made it marshalled.
func mustConfig(c store.Container) *runtimeapi.ContainerConfig {
	cfg, _ := ctrConfig(c)
	return cfg
}

package cri

import (
	"context"
	"fmt"
	"slices"

	"github.com/containerd/errdefs"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/macvz/macvz/runtime/store"
)

// CheckpointPod checkpoints a pod's VM into output_path (an existing,
// empty directory): its containers' processes are stopped, the VM paused,
// its memory state saved and its disk files cloned, then everything runs
// on, also when the call fails or its deadline passes
// (runtime/sandbox/checkpoint.go). A VM is checkpointed whole, so
// container_ids must be every running container of the pod.
func (s *Service) CheckpointPod(ctx context.Context, r *runtimeapi.CheckpointPodRequest) (*runtimeapi.CheckpointPodResponse, error) {
	if r.GetPodSandboxId() == "" {
		return nil, fmt.Errorf("CheckpointPod needs a pod_sandbox_id: %w", errdefs.ErrInvalidArgument)
	}
	if err := noOptions("CheckpointPod", r.GetOptions()); err != nil {
		return nil, err
	}
	ids := r.GetContainerIds()
	if len(ids) == 0 {
		return nil, fmt.Errorf("CheckpointPod needs the pod's running containers in container_ids: %w", errdefs.ErrInvalidArgument)
	}
	sb, err := s.sandbox(ctx, r.GetPodSandboxId())
	if err != nil {
		return nil, err
	}
	unlock := s.ctl.Lock(sb.ID)
	defer unlock()
	if sb, err = s.sandbox(ctx, sb.ID); err != nil {
		return nil, err
	}
	sb = s.ctl.Refresh(ctx, sb)
	if sb.State != store.SandboxReady || !sb.VMStarted {
		return nil, fmt.Errorf("sandbox %s has no running VM to checkpoint: %w", sb.ID, errdefs.ErrFailedPrecondition)
	}
	all, err := s.st.Containers(func(c *store.Container) bool { return c.SandboxID == sb.ID })
	if err != nil {
		return nil, err
	}
	var running []store.Container
	for _, c := range all {
		if c = s.ctl.RefreshContainer(ctx, c); c.State == store.ContainerRunning {
			running = append(running, c)
		}
	}
	var ctrs []store.Container
	seen := map[string]bool{}
	for _, id := range ids {
		if seen[id] {
			return nil, fmt.Errorf("container %s is named twice in container_ids: %w", id, errdefs.ErrInvalidArgument)
		}
		seen[id] = true
		i := slices.IndexFunc(running, func(c store.Container) bool { return c.ID == id })
		if i < 0 {
			return nil, fmt.Errorf("container %s is not a running container of pod %s: %w", id, sb.ID, errdefs.ErrFailedPrecondition)
		}
		ctrs = append(ctrs, running[i])
	}
	if len(ctrs) != len(running) {
		var missing []string
		for _, c := range running {
			if !seen[c.ID] {
				missing = append(missing, c.ID)
			}
		}
		return nil, fmt.Errorf("pod %s's VM is checkpointed whole, so container_ids must name every running container; missing %v: %w", sb.ID, missing, errdefs.ErrInvalidArgument)
	}
	img, err := s.images.VMImage(ctx, sb.VMImage)
	if err != nil {
		return nil, fmt.Errorf("the pod's VM image: %w", err)
	}
	if err := s.ctl.Checkpoint(ctx, sb, &img, ctrs, r.GetOutputPath()); err != nil {
		return nil, err
	}
	return &runtimeapi.CheckpointPodResponse{}, nil
}

// noOptions refuses runtime-specific options: macvz defines none, and the
// CRI says unsupported keys must not be ignored.
func noOptions(verb string, o map[string]string) error {
	for k := range o {
		return fmt.Errorf("%s: macvz takes no options (got %q): %w", verb, k, errdefs.ErrInvalidArgument)
	}
	return nil
}

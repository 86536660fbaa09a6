package cri

import (
	"context"
	"fmt"
	"time"

	"github.com/containerd/errdefs"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/macvz/macvz/runtime/store"
)

// CheckpointContainer of the container that stands for the VM (a VM
// image without a command) checkpoints the VM, its pod, into location,
// an empty directory, as CheckpointPod does. A process container cannot
// be checkpointed alone: it shares its VM's memory and kernel with the
// rest of the pod.
func (s *Service) CheckpointContainer(ctx context.Context, r *runtimeapi.CheckpointContainerRequest) (*runtimeapi.CheckpointContainerResponse, error) {
	if r.GetContainerId() == "" {
		return nil, fmt.Errorf("CheckpointContainer needs a container_id: %w", errdefs.ErrInvalidArgument)
	}
	c, err := s.container(ctx, r.GetContainerId())
	if err != nil {
		return nil, err
	}
	if !c.IsVM {
		return nil, fmt.Errorf("container %s is a process in pod %s's VM: a VM runtime checkpoints the whole pod, so use CheckpointPod (or CheckpointContainer of the pod's VM container): %w", c.ID, c.SandboxID, errdefs.ErrFailedPrecondition)
	}
	if r.GetTimeout() < 0 {
		return nil, fmt.Errorf("timeout %d is negative: %w", r.GetTimeout(), errdefs.ErrInvalidArgument)
	}
	cs, err := s.st.Containers(func(o *store.Container) bool { return o.SandboxID == c.SandboxID })
	if err != nil {
		return nil, err
	}
	var ids []string
	for _, o := range cs {
		if s.ctl.RefreshContainer(ctx, o).State == store.ContainerRunning {
			ids = append(ids, o.ID)
		}
	}
	if t := r.GetTimeout(); t > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, time.Duration(t)*time.Second)
		defer cancel()
	}
	// The location is the directory the checkpoint's files go into (a
	// VM's checkpoint is no single archive): absolute, existing, empty.
	if _, err := s.CheckpointPod(ctx, &runtimeapi.CheckpointPodRequest{PodSandboxId: c.SandboxID, OutputPath: r.GetLocation(), ContainerIds: ids}); err != nil {
		return nil, err
	}
	return &runtimeapi.CheckpointContainerResponse{}, nil
}

package cri

import (
	"context"
	"fmt"

	"github.com/containerd/errdefs"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// UpdatePodSandboxResources is kubelet's in-place resize of a pod: the
// pod's new resources, as RunPodSandbox got them, go to its VM as far as
// a running VM can change (runtime/sandbox/resize.go): its memory shrinks
// and grows back through the balloon; more memory than it booted with,
// or another vCPU count, is FailedPrecondition with the reason, which
// kubelet shows in the pod's resize status.
func (s *Service) UpdatePodSandboxResources(ctx context.Context, r *runtimeapi.UpdatePodSandboxResourcesRequest) (*runtimeapi.UpdatePodSandboxResourcesResponse, error) {
	res := r.GetResources()
	if res == nil {
		return nil, fmt.Errorf("UpdatePodSandboxResources needs the pod's linux resources: %w", errdefs.ErrInvalidArgument)
	}
	if err := validateResources(res); err != nil {
		return nil, err
	}
	sb, err := s.sandbox(ctx, r.GetPodSandboxId())
	if err != nil {
		return nil, err
	}
	unlock := s.ctl.Lock(sb.ID)
	defer unlock()
	if err := s.ctl.Resize(ctx, sb.ID, resourcesOf(res)); err != nil {
		return nil, err
	}
	return &runtimeapi.UpdatePodSandboxResourcesResponse{}, nil
}

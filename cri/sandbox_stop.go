package cri

import (
	"context"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/containerd/errdefs"
)

// StopPodSandbox stops the sandbox's VM (its containers with it) and
// marks it NotReady. Stopping a stopped, removed or unknown sandbox is
// fine: the CRI makes stop idempotent (critest checks it).
func (s *Service) StopPodSandbox(ctx context.Context, r *runtimeapi.StopPodSandboxRequest) (*runtimeapi.StopPodSandboxResponse, error) {
	sb, err := s.sandbox(ctx, r.GetPodSandboxId())
	if errdefs.IsNotFound(err) {
		return &runtimeapi.StopPodSandboxResponse{}, nil
	}
	if err != nil {
		return nil, err
	}
	unlock := s.ctl.Lock(sb.ID)
	defer unlock()
	if err := s.ctl.Stop(ctx, sb.ID); err != nil {
		return nil, err
	}
	return &runtimeapi.StopPodSandboxResponse{}, nil
}

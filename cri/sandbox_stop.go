package cri

import (
	"context"
	"fmt"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/containerd/errdefs"
	"github.com/macvz/macvz/runtime/store"
)

// StopPodSandbox stops the sandbox's VM (its containers with it) and
// marks it NotReady. Stopping a stopped, removed or unknown sandbox is
// fine: the CRI makes stop idempotent (critest checks it).
func (s *Service) StopPodSandbox(ctx context.Context, r *runtimeapi.StopPodSandboxRequest) (*runtimeapi.StopPodSandboxResponse, error) {
	sb, err := s.st.Sandbox(r.GetPodSandboxId())
	if errdefs.IsNotFound(err) {
		return &runtimeapi.StopPodSandboxResponse{}, nil
	}
	if err != nil {
		return nil, err
	}
	unlock := s.locks.lock(sb.ID)
	defer unlock()
	if err := s.stopSandbox(ctx, sb.ID); err != nil {
		return nil, err
	}
	return &runtimeapi.StopPodSandboxResponse{}, nil
}

// stopSandbox is StopPodSandbox under the sandbox lock.
func (s *Service) stopSandbox(ctx context.Context, id string) error {
	s.setStopping(id, true)
	defer s.setStopping(id, false)
	sb, err := s.st.Sandbox(id)
	if err != nil {
		return err
	}
	if err := s.stopVM(ctx, sb, vmStopGrace, ""); err != nil {
		return fmt.Errorf("sandbox %s: %w", sb.ID, err)
	}
	s.ports.Stop(sb.ID)
	// The VM is gone: its tap and address can go (CNI DEL).
	if err := s.teardownNetwork(ctx, sb); err != nil {
		return fmt.Errorf("sandbox %s: %w", sb.ID, err)
	}
	// Containers that never started cannot start any more.
	_, err = s.st.UpdateSandbox(sb.ID, func(r *store.Sandbox) error {
		r.State = store.SandboxNotReady
		r.VMStarted = false
		return nil
	})
	if err != nil {
		return err
	}
	sbLog(sb.ID).Info("sandbox stopped")
	return nil
}

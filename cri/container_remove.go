package cri

import (
	"context"
	"fmt"

	"github.com/containerd/errdefs"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/macvz/macvz/internal/testpause"
	"github.com/macvz/macvz/runtime/agentapi"
)

// RemoveContainer removes a container, killing it first if it runs (as
// the CRI asks). Removing an unknown or removed container is fine.
func (s *Service) RemoveContainer(ctx context.Context, r *runtimeapi.RemoveContainerRequest) (*runtimeapi.RemoveContainerResponse, error) {
	c, err := s.container(ctx, r.GetContainerId())
	if errdefs.IsNotFound(err) {
		return &runtimeapi.RemoveContainerResponse{}, nil
	}
	if err != nil {
		return nil, err
	}
	unlock := s.ctl.Lock(c.SandboxID)
	defer unlock()
	if err := s.stopContainer(ctx, c.ID, 0); err != nil {
		if errdefs.IsNotFound(err) {
			return &runtimeapi.RemoveContainerResponse{}, nil
		}
		return nil, fmt.Errorf("stopping container %s before removing it: %w", c.ID, err)
	}
	testpause.Pause(ctx, "rm") // test-only hook, inert unless MACVZ_TEST_PAUSE=rm
	sb, err := s.sandbox(ctx, c.SandboxID)
	if err != nil && !errdefs.IsNotFound(err) {
		return nil, err
	}
	if err == nil {
		if sb.VMStarted && !c.IsVM {
			if sc, err := s.ctl.Shim(ctx, sb); err == nil {
				// The shim and the guest forget the process. Its volume
				// binds in the guest stay (empty once the host side
				// below is unmounted) until the VM stops.
				if err := sc.RemoveProcess(ctx, &agentapi.ProcessID{ContainerId: c.ID}); err != nil {
					ctrLog(c).Warn("removing the process from the guest", "err", err)
				}
			}
		}
		if err := s.ctl.UnbindVolumes(sb, c.ID); err != nil {
			return nil, err
		}
	}
	if err := s.st.DeleteContainer(c); err != nil && !errdefs.IsNotFound(err) {
		return nil, err
	}
	ctrLog(c).Info("container removed")
	s.releaseImageVolumes(ctx, c.VolumeImages)
	s.containerEvent(runtimeapi.ContainerEventType_CONTAINER_DELETED_EVENT, c.SandboxID, c.ID)
	return &runtimeapi.RemoveContainerResponse{}, nil
}

package cri

import (
	"context"
	"errors"
	"fmt"

	"github.com/containerd/errdefs"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/macvz/macvz/runtime/shim"
	"github.com/macvz/macvz/runtime/store"
)

// RemovePodSandbox stops the sandbox if needed, then removes its
// containers, its disk clone, its state directory and its records.
// Removing an unknown (or removed) sandbox is fine.
func (s *Service) RemovePodSandbox(ctx context.Context, r *runtimeapi.RemovePodSandboxRequest) (*runtimeapi.RemovePodSandboxResponse, error) {
	sb, err := s.st.Sandbox(r.GetPodSandboxId())
	if errdefs.IsNotFound(err) {
		return &runtimeapi.RemovePodSandboxResponse{}, nil
	}
	if err != nil {
		return nil, err
	}
	unlock := s.locks.lock(sb.ID)
	defer unlock()
	if sb, err = s.st.Sandbox(sb.ID); errdefs.IsNotFound(err) {
		return &runtimeapi.RemovePodSandboxResponse{}, nil
	}
	if sb.State == store.SandboxReady || sb.VMStarted {
		if err := s.stopSandbox(ctx, sb.ID); err != nil {
			return nil, err
		}
	}
	testPause(ctx, "rmp") // test-only hook, inert unless MACVZ_TEST_PAUSE=rmp
	if err := s.destroySandbox(ctx, sb); err != nil {
		return nil, err
	}
	sbLog(sb.ID).Info("sandbox removed")
	return &runtimeapi.RemovePodSandboxResponse{}, nil
}

// destroySandbox removes everything a sandbox has, whatever state it is
// in: the shim and VM (killed), volume binds, the disk clone, the state
// directory, the container records and the sandbox record, in that
// order, so a failure part way leaves a record to retry from.
func (s *Service) destroySandbox(ctx context.Context, sb store.Sandbox) error {
	s.ports.Stop(sb.ID)
	s.dropShim(sb.ID)
	var errs []error
	if err := shim.Kill(ctx, sb.Dir); err != nil {
		errs = append(errs, err)
	}
	if err := s.teardownNetwork(ctx, sb); err != nil {
		errs = append(errs, err)
	}
	if err := removeSandboxFiles(sb.Dir); err != nil {
		errs = append(errs, err)
	}
	if sb.Disk != "" {
		if err := s.sn.Remove(ctx, sb.Disk); err != nil && !errdefs.IsNotFound(err) {
			errs = append(errs, fmt.Errorf("removing the disk clone: %w", err))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("removing sandbox %s: %w", sb.ID, err)
	}
	cs, err := s.st.Containers(func(c *store.Container) bool { return c.SandboxID == sb.ID })
	if err != nil {
		return err
	}
	for _, c := range cs {
		if err := s.st.DeleteContainer(c); err != nil && !errdefs.IsNotFound(err) {
			return err
		}
	}
	if err := s.st.DeleteSandbox(sb); err != nil && !errdefs.IsNotFound(err) {
		return err
	}
	return nil
}

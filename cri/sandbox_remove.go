package cri

import (
	"context"

	"github.com/containerd/errdefs"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/macvz/macvz/internal/testpause"
	"github.com/macvz/macvz/runtime/store"
)

// RemovePodSandbox stops the sandbox if needed, then removes its
// containers, its disk clone, its state directory and its records.
// Removing an unknown (or removed) sandbox is fine.
func (s *Service) RemovePodSandbox(ctx context.Context, r *runtimeapi.RemovePodSandboxRequest) (*runtimeapi.RemovePodSandboxResponse, error) {
	sb, err := s.sandbox(ctx, r.GetPodSandboxId())
	if errdefs.IsNotFound(err) {
		return &runtimeapi.RemovePodSandboxResponse{}, nil
	}
	if err != nil {
		return nil, err
	}
	unlock := s.ctl.Lock(sb.ID)
	defer unlock()
	if sb, err = s.sandbox(ctx, sb.ID); errdefs.IsNotFound(err) {
		return &runtimeapi.RemovePodSandboxResponse{}, nil
	}
	if sb.State == store.SandboxReady || sb.VMStarted {
		if err := s.ctl.Stop(ctx, sb.ID); err != nil {
			return nil, err
		}
	}
	testpause.Pause(ctx, "rmp") // test-only hook, inert unless MACVZ_TEST_PAUSE=rmp
	// The deleted events carry the sandbox's last status and name its
	// containers, which the removal takes with it.
	if rec, err := s.st.Sandbox(sb.ID); err == nil {
		sb = rec
	}
	cs, err := s.st.Containers(func(c *store.Container) bool { return c.SandboxID == sb.ID })
	if err != nil {
		return nil, err
	}
	if err := s.ctl.Remove(ctx, sb); err != nil {
		return nil, err
	}
	sbLog(sb.ID).Info("sandbox removed")
	ids := make([]string, 0, len(cs))
	var volImages []string
	for _, c := range cs {
		ids = append(ids, c.ID)
		volImages = append(volImages, c.VolumeImages...)
	}
	s.releaseImageVolumes(ctx, volImages)
	s.sandboxRemoved(sb, ids)
	return &runtimeapi.RemovePodSandboxResponse{}, nil
}

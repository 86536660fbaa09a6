package cri

import (
	"context"
	"encoding/json"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/macvz/macvz/runtime/store"
)

// ContainerStatus reports a container; NotFound for an unknown ID.
func (s *Service) ContainerStatus(ctx context.Context, r *runtimeapi.ContainerStatusRequest) (*runtimeapi.ContainerStatusResponse, error) {
	c, err := s.container(ctx, r.GetContainerId())
	if err != nil {
		return nil, err
	}
	c = s.ctl.RefreshContainer(ctx, c)
	st, err := s.containerStatus(c)
	if err != nil {
		return nil, err
	}
	resp := &runtimeapi.ContainerStatusResponse{Status: st}
	if r.GetVerbose() {
		b, err := json.Marshal(map[string]any{"sandboxId": c.SandboxID, "isVM": c.IsVM, "imageId": c.ImageID})
		if err != nil {
			return nil, err
		}
		resp.Info = map[string]string{"info": string(b)}
	}
	return resp, nil
}

func (s *Service) containerStatus(c store.Container) (*runtimeapi.ContainerStatus, error) {
	cfg, err := ctrConfig(c)
	if err != nil {
		return nil, err
	}
	st := &runtimeapi.ContainerStatus{
		Id:          c.ID,
		Metadata:    cfg.GetMetadata(),
		State:       criContainerState(c.State),
		CreatedAt:   c.CreatedAt.UnixNano(),
		Image:       &runtimeapi.ImageSpec{Image: c.ImageRef},
		ImageRef:    c.ImageID,
		ImageId:     c.ImageID,
		Labels:      cfg.GetLabels(),
		Annotations: cfg.GetAnnotations(),
		Mounts:      cfg.GetMounts(),
		LogPath:     c.LogPath,
		Reason:      c.Reason,
		Message:     c.Message,
		ExitCode:    c.ExitCode,
	}
	if !c.StartedAt.IsZero() {
		st.StartedAt = c.StartedAt.UnixNano()
	}
	if !c.FinishedAt.IsZero() {
		st.FinishedAt = c.FinishedAt.UnixNano()
	}
	// The limits the container runs with (UpdateContainerResources
	// records them once applied): kubelet shows them in the pod's status
	// and compares them with what a resize asked.
	if res := cfg.GetLinux().GetResources(); res != nil {
		st.Resources = &runtimeapi.ContainerResources{Linux: res}
	}
	return st, nil
}

// ListContainers lists containers matching the filter.
func (s *Service) ListContainers(ctx context.Context, r *runtimeapi.ListContainersRequest) (*runtimeapi.ListContainersResponse, error) {
	cs, err := s.listContainers(ctx, r.GetFilter())
	if err != nil {
		return nil, err
	}
	return &runtimeapi.ListContainersResponse{Containers: cs}, nil
}

// StreamContainers is ListContainers in pages.
func (s *Service) StreamContainers(r *runtimeapi.StreamContainersRequest, stream runtimeapi.RuntimeService_StreamContainersServer) error {
	cs, err := s.listContainers(stream.Context(), r.GetFilter())
	if err != nil {
		return err
	}
	return sendPages(cs, func(p []*runtimeapi.Container) error {
		return stream.Send(&runtimeapi.StreamContainersResponse{Containers: p})
	})
}

func (s *Service) listContainers(ctx context.Context, f *runtimeapi.ContainerFilter) ([]*runtimeapi.Container, error) {
	recs := s.st.ContainersView(visibleContainers(ctx, func(c *store.Container) bool {
		return (f.GetId() == "" || hasPrefix(c.ID, f.GetId())) &&
			(f.GetPodSandboxId() == "" || hasPrefix(c.SandboxID, f.GetPodSandboxId()))
	}))
	out := make([]*runtimeapi.Container, 0, len(recs))
	ids := make(map[string]bool, len(recs))
	defer func() {
		s.listed.ctrs.keepOnly(ids)
		keepItems(s.listed, s.listed.ctrItems, ids)
	}()
	for _, rec := range recs {
		ids[rec.ID] = true
		c := s.ctl.RefreshContainer(ctx, *rec)
		if st := f.GetState(); st != nil && st.GetState() != criContainerState(c.State) {
			continue
		}
		cfg, err := s.listed.listedCtrConfig(c)
		if err != nil {
			return nil, err
		}
		if !labelsMatch(cfg.GetLabels(), f.GetLabelSelector()) {
			continue
		}
		out = append(out, s.listed.ctrItem(c, criContainerState(c.State), cfg))
	}
	return out, nil
}

func hasPrefix(s, p string) bool { return len(s) >= len(p) && s[:len(p)] == p }

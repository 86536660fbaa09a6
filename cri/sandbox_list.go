package cri

import (
	"context"
	"strings"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/macvz/macvz/runtime/store"
)

// ListPodSandbox lists sandboxes matching the filter (ID prefix, state,
// labels).
func (s *Service) ListPodSandbox(ctx context.Context, r *runtimeapi.ListPodSandboxRequest) (*runtimeapi.ListPodSandboxResponse, error) {
	sbs, err := s.listSandboxes(ctx, r.GetFilter())
	if err != nil {
		return nil, err
	}
	return &runtimeapi.ListPodSandboxResponse{Items: sbs}, nil
}

// StreamPodSandboxes is ListPodSandbox in pages.
func (s *Service) StreamPodSandboxes(r *runtimeapi.StreamPodSandboxesRequest, stream runtimeapi.RuntimeService_StreamPodSandboxesServer) error {
	sbs, err := s.listSandboxes(stream.Context(), r.GetFilter())
	if err != nil {
		return err
	}
	return sendPages(sbs, func(p []*runtimeapi.PodSandbox) error {
		return stream.Send(&runtimeapi.StreamPodSandboxesResponse{PodSandboxes: p})
	})
}

func (s *Service) listSandboxes(ctx context.Context, f *runtimeapi.PodSandboxFilter) ([]*runtimeapi.PodSandbox, error) {
	recs := s.st.SandboxesView(visibleSandboxes(ctx, func(sb *store.Sandbox) bool {
		return f.GetId() == "" || strings.HasPrefix(sb.ID, f.GetId())
	}))
	out := make([]*runtimeapi.PodSandbox, 0, len(recs))
	ids := make(map[string]bool, len(recs))
	defer func() {
		s.listed.pods.keepOnly(ids)
		keepItems(s.listed, s.listed.podItems, ids)
	}()
	for _, rec := range recs {
		ids[rec.ID] = true
		sb := s.ctl.Refresh(ctx, *rec)
		if st := f.GetState(); st != nil && st.GetState() != criSandboxState(sb.State) {
			continue
		}
		cfg, err := s.listed.listedPodConfig(sb)
		if err != nil {
			return nil, err
		}
		if !labelsMatch(cfg.GetLabels(), f.GetLabelSelector()) {
			continue
		}
		out = append(out, s.listed.podItem(sb, criSandboxState(sb.State), cfg))
	}
	return out, nil
}

func labelsMatch(labels, selector map[string]string) bool {
	for k, v := range selector {
		if labels[k] != v {
			return false
		}
	}
	return true
}

// sendPages sends items in pages of streamPage.
func sendPages[T any](items []T, send func([]T) error) error {
	for len(items) > 0 {
		n := min(len(items), streamPage)
		if err := send(items[:n]); err != nil {
			return err
		}
		items = items[n:]
	}
	return nil
}

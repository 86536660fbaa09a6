package cri

import (
	"context"

	"github.com/containerd/errdefs"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// RemoveImage removes an image (by ID, tag or digest) with all its names,
// as containerd does. Removing an absent image succeeds.
func (s *Service) RemoveImage(ctx context.Context, r *runtimeapi.RemoveImageRequest) (*runtimeapi.RemoveImageResponse, error) {
	// Saved VM states of the image hold its base (their disks are its
	// children): they go first.
	if recs, err := s.images.Resolve(ctx, r.GetImage().GetImage()); err == nil {
		for _, rec := range recs {
			if !s.imageInUse(rec.ID()) {
				s.ctl.ForgetImage(ctx, rec.Manifest.Digest)
			}
		}
	}
	err := s.images.Remove(ctx, r.GetImage().GetImage())
	if err != nil && !errdefs.IsNotFound(err) {
		return nil, err
	}
	return &runtimeapi.RemoveImageResponse{}, nil
}

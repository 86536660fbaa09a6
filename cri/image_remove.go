package cri

import (
	"context"

	"github.com/containerd/errdefs"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// RemoveImage removes an image (by ID, tag or digest) with all its names,
// as containerd does. Removing an absent image succeeds.
func (s *Service) RemoveImage(ctx context.Context, r *runtimeapi.RemoveImageRequest) (*runtimeapi.RemoveImageResponse, error) {
	err := s.removeImage(ctx, r.GetImage().GetImage())
	if err != nil && !errdefs.IsNotFound(err) {
		return nil, err
	}
	return &runtimeapi.RemoveImageResponse{}, nil
}

// removeImage is RemoveImage's work, shared with the admin API's image
// rm and prune: NotFound for an absent image, FailedPrecondition while a
// sandbox or an image volume uses it (the store asks imageInUse).
func (s *Service) removeImage(ctx context.Context, ref string) error {
	// Saved VM states of the image hold its base (their disks are its
	// children): they go first.
	if recs, err := s.images.Resolve(ctx, ref); err == nil {
		for _, rec := range recs {
			if !s.imageInUse(rec.ID()) {
				s.ctl.ForgetImage(ctx, rec.Manifest.Digest)
			}
		}
	}
	return s.images.Remove(ctx, ref)
}

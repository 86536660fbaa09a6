package cri

import (
	"context"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/macvz/macvz/vmimage/imagestore"
)

// PullImage fetches an image with the caller's credentials. Ordinary OCI
// and Docker images are stored like containerd stores them; VM images are
// also unpacked into a committed base so that sandboxes clone it at once.
func (s *Service) PullImage(ctx context.Context, r *runtimeapi.PullImageRequest) (*runtimeapi.PullImageResponse, error) {
	var auth *imagestore.Auth
	if a := r.GetAuth(); a != nil {
		auth = &imagestore.Auth{
			Username:      a.GetUsername(),
			Password:      a.GetPassword(),
			Auth:          a.GetAuth(),
			IdentityToken: a.GetIdentityToken(),
			RegistryToken: a.GetRegistryToken(),
			ServerAddress: a.GetServerAddress(),
		}
	}
	img, err := s.images.Pull(ctx, r.GetImage().GetImage(), auth)
	if err != nil {
		return nil, err
	}
	// containerd answers with the image ID; kubelet keys its image GC on it.
	return &runtimeapi.PullImageResponse{ImageRef: img.ID()}, nil
}

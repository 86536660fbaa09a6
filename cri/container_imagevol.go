package cri

import (
	"context"
	"fmt"
	"log/slog"
	"slices"

	"github.com/containerd/errdefs"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/macvz/macvz/runtime/store"
	"github.com/macvz/macvz/vmimage/imagetree"
)

// Image volumes (Kubernetes' ImageVolume, a CRI Mount naming an image):
// the image's file tree (imagestore.Tree: an ordinary image's layers, a
// Linux VM image's initramfs), unpacked once and shared read-only by
// every container that mounts it, reaches the guest as any read-only
// volume does. CreateContainer resolves each such mount to the tree (or
// its image_sub_path inside it) and records it in the container's
// config as the mount's host_path, with the image's ID as its image_ref,
// which ContainerStatus reports.

// resolveImageVolumes fills in the image volumes of cfg and returns the
// IDs of their images. An image volume must be read-only, its image
// present and its sub path in the image.
func (s *Service) resolveImageVolumes(ctx context.Context, cfg *runtimeapi.ContainerConfig) ([]string, error) {
	var ids []string
	for _, m := range cfg.GetMounts() {
		spec := m.GetImage()
		if spec.GetImage() == "" {
			if m.GetImageSubPath() != "" {
				return nil, fmt.Errorf("mount %s: image_sub_path %q without an image: %w", m.GetContainerPath(), m.GetImageSubPath(), errdefs.ErrInvalidArgument)
			}
			continue
		}
		if m.GetHostPath() != "" {
			return nil, fmt.Errorf("mount %s names both an image (%s) and a host path (%s): %w", m.GetContainerPath(), spec.GetImage(), m.GetHostPath(), errdefs.ErrInvalidArgument)
		}
		if !m.GetReadonly() {
			return nil, fmt.Errorf("image volume %s at %s must be read-only: %w", spec.GetImage(), m.GetContainerPath(), errdefs.ErrInvalidArgument)
		}
		recs, err := s.images.Resolve(ctx, spec.GetImage())
		if errdefs.IsNotFound(err) {
			return nil, fmt.Errorf("image volume %s at %s: the image is not present; pull it first: %w", spec.GetImage(), m.GetContainerPath(), errdefs.ErrNotFound)
		}
		if err != nil {
			return nil, err
		}
		img := recs[0]
		tree, err := s.images.Tree(ctx, img)
		if err != nil {
			return nil, fmt.Errorf("image volume at %s: %w", m.GetContainerPath(), err)
		}
		host, err := imagetree.Resolve(tree, m.GetImageSubPath())
		if err != nil {
			return nil, fmt.Errorf("image volume %s at %s: %w", spec.GetImage(), m.GetContainerPath(), err)
		}
		m.HostPath = host
		spec.ImageRef = img.ID()
		if !slices.Contains(ids, img.ID()) {
			ids = append(ids, img.ID())
		}
	}
	return ids, nil
}

// releaseImageVolumes drops the trees of images that no container mounts
// any more (after a container's removal): the next mount unpacks again.
func (s *Service) releaseImageVolumes(ctx context.Context, ids []string) {
	for _, id := range ids {
		if s.imageVolumeInUse(id) {
			continue
		}
		recs, err := s.images.Resolve(ctx, id)
		if err != nil {
			continue // removed with its tree
		}
		if err := s.images.RemoveTree(ctx, recs[0]); err != nil {
			slog.Warn("releasing an image volume's tree", "image", id, "err", err)
		}
	}
}

// imageVolumeInUse says whether a container mounts the image id.
func (s *Service) imageVolumeInUse(id string) bool {
	cs, err := s.st.Containers(func(c *store.Container) bool { return slices.Contains(c.VolumeImages, id) })
	return err != nil || len(cs) > 0
}

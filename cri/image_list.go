package cri

import (
	"context"
	"sort"
	"strconv"
	"strings"

	"github.com/containerd/errdefs"
	"github.com/distribution/reference"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/macvz/macvz/vmimage/imagestore"
)

// ListImages lists every image, one entry per image ID with all its tags
// and digests; a filter narrows it to the image a reference or ID names.
func (s *Service) ListImages(ctx context.Context, r *runtimeapi.ListImagesRequest) (*runtimeapi.ListImagesResponse, error) {
	var recs []imagestore.Image
	var err error
	if f := r.GetFilter().GetImage().GetImage(); f != "" {
		recs, err = s.filterImages(ctx, f)
	} else {
		recs, err = s.images.List(ctx)
	}
	if err != nil {
		return nil, err
	}
	var out []*runtimeapi.Image
	for _, group := range groupByID(recs) {
		img, err := s.criImage(ctx, group)
		if err != nil {
			return nil, err
		}
		out = append(out, img)
	}
	return &runtimeapi.ListImagesResponse{Images: out}, nil
}

// groupByID groups image records by image ID, in a stable order.
func groupByID(recs []imagestore.Image) [][]imagestore.Image {
	idx := map[string]int{}
	var groups [][]imagestore.Image
	for _, r := range recs {
		i, ok := idx[r.ID()]
		if !ok {
			i = len(groups)
			idx[r.ID()] = i
			groups = append(groups, nil)
		}
		groups[i] = append(groups[i], r)
	}
	return groups
}

// criImage is the CRI view of one image ID and all its names.
func (s *Service) criImage(ctx context.Context, recs []imagestore.Image) (*runtimeapi.Image, error) {
	first := recs[0]
	img := &runtimeapi.Image{
		Id:   first.ID(),
		Size: uint64(first.Size),
		Spec: &runtimeapi.ImageSpec{Image: first.ID()},
	}
	for _, r := range recs {
		if strings.Contains(r.Name, "@") {
			img.RepoDigests = append(img.RepoDigests, r.Name)
		} else {
			img.RepoTags = append(img.RepoTags, r.Name)
		}
	}
	sort.Strings(img.RepoTags)
	sort.Strings(img.RepoDigests)
	user, err := s.imageUser(ctx, first)
	if err != nil {
		return nil, err
	}
	// As containerd: a numeric user (before any ":group") is the uid, a
	// name is the username.
	user, _, _ = strings.Cut(user, ":")
	if user != "" {
		if uid, err := strconv.ParseInt(user, 10, 64); err == nil {
			img.Uid = &runtimeapi.Int64Value{Value: uid}
		} else {
			img.Username = user
		}
	}
	return img, nil
}

// filterImages is ListImages' filter: an image ID, a tag or a digest names
// one image (as ImageStatus resolves it); a bare repository ("busybox",
// "registry.k8s.io/pause") matches every image with a name in it, as
// `crictl images <repo>` expects. A filter that matches nothing, or is not
// a reference at all, lists nothing.
func (s *Service) filterImages(ctx context.Context, f string) ([]imagestore.Image, error) {
	if named, err := reference.ParseNormalizedNamed(f); err == nil && reference.IsNameOnly(named) {
		all, err := s.images.List(ctx)
		if err != nil {
			return nil, err
		}
		ids := map[string]bool{}
		for _, img := range all {
			if n, err := reference.ParseNormalizedNamed(img.Name); err == nil && n.Name() == named.Name() {
				ids[img.ID()] = true
			}
		}
		var out []imagestore.Image
		for _, img := range all {
			if ids[img.ID()] {
				out = append(out, img)
			}
		}
		return out, nil
	}
	recs, err := s.images.Resolve(ctx, f)
	if errdefs.IsNotFound(err) || errdefs.IsInvalidArgument(err) {
		return nil, nil
	}
	return recs, err
}

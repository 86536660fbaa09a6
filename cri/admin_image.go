package cri

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"sort"
	"strings"

	"github.com/containerd/errdefs"

	"github.com/macvz/macvz/runtime/adminapi"
	"github.com/macvz/macvz/vmimage/imagestore"
)

// The admin API's images (`macvz image`): the CRI image service's own
// logic (ListImages' grouping, ImageStatus' verbose info, RemoveImage's
// removal and its in-use refusal), with sizes and users added.

func (a *adminServer) ListImages(ctx context.Context, _ *adminapi.ListImagesRequest) (*adminapi.ListImagesResponse, error) {
	groups, users, pins, err := a.imageGroups(ctx)
	if err != nil {
		return nil, err
	}
	out := &adminapi.ListImagesResponse{}
	for _, group := range groups {
		img, err := a.imageOf(ctx, group, users, pins)
		if err != nil {
			return nil, err
		}
		out.Images = append(out.Images, img)
	}
	sort.Slice(out.Images, func(i, j int) bool { return out.Images[i].Names[0] < out.Images[j].Names[0] })
	return out, nil
}

func (a *adminServer) InspectImage(ctx context.Context, r *adminapi.InspectImageRequest) (*adminapi.InspectImageResponse, error) {
	recs, img, err := a.describeImage(ctx, r.GetRef())
	if err != nil {
		return nil, err
	}
	info, err := a.s.imageInfo(ctx, recs[0])
	if err != nil {
		return nil, err
	}
	return &adminapi.InspectImageResponse{Image: img, Info: info}, nil
}

// imageGroups is the store's images grouped by ID, with their users and
// pins.
func (a *adminServer) imageGroups(ctx context.Context) (groups [][]imagestore.Image, users map[string][]string, pins map[string]bool, err error) {
	recs, err := a.s.images.List(ctx)
	if err != nil {
		return nil, nil, nil, err
	}
	if users, err = a.imageUsers(); err != nil {
		return nil, nil, nil, err
	}
	return groupByID(recs), users, a.pinnedImages(ctx), nil
}

// describeImage resolves ref to its records and describes the image
// with its sizes, users and pin.
func (a *adminServer) describeImage(ctx context.Context, ref string) ([]imagestore.Image, *adminapi.Image, error) {
	recs, err := a.resolveImage(ctx, ref)
	if err != nil {
		return nil, nil, err
	}
	users, err := a.imageUsers()
	if err != nil {
		return nil, nil, err
	}
	img, err := a.imageOf(ctx, recs, users, a.pinnedImages(ctx))
	if err != nil {
		return nil, nil, err
	}
	return recs, img, nil
}

func (a *adminServer) RemoveImage(ctx context.Context, r *adminapi.RemoveImageRequest) (*adminapi.RemoveImageResponse, error) {
	recs, img, err := a.describeImage(ctx, r.GetRef())
	if err != nil {
		return nil, err
	}
	if err := a.s.removeImage(ctx, recs[0].ID()); err != nil {
		if errdefs.IsFailedPrecondition(err) && len(img.UsedBy) > 0 {
			return nil, fmt.Errorf("image %s is used by sandbox %s; remove the pod first: %w", r.GetRef(), shortIDs(img.UsedBy), errdefs.ErrFailedPrecondition)
		}
		return nil, err
	}
	slog.Info("image removed through the admin API", "image", img.Names[0], "id", img.Id)
	return &adminapi.RemoveImageResponse{Removed: img}, nil
}

// PruneImages removes each image that nothing uses and the configuration
// does not name, and what interrupted pulls left to resume from; freed is
// the store's usage before less after, so blobs the removed images shared
// with kept ones are not counted.
func (a *adminServer) PruneImages(ctx context.Context, _ *adminapi.PruneImagesRequest) (*adminapi.PruneImagesResponse, error) {
	before, _, err := a.s.images.Usage(ctx)
	if err != nil {
		return nil, err
	}
	groups, users, pins, err := a.imageGroups(ctx)
	if err != nil {
		return nil, err
	}
	out := &adminapi.PruneImagesResponse{}
	for _, group := range groups {
		id := group[0].ID()
		if len(users[id]) > 0 || pins[id] || a.s.imageInUse(id) {
			continue
		}
		img, err := a.imageOf(ctx, group, users, pins)
		if err != nil {
			return nil, err
		}
		// A pod may have taken it since the check: the store refuses
		// then, and prune leaves it.
		if err := a.s.removeImage(ctx, id); err != nil {
			if errdefs.IsFailedPrecondition(err) || errdefs.IsNotFound(err) {
				continue
			}
			return out, err
		}
		out.Removed = append(out.Removed, img)
	}
	// What interrupted pulls kept for a retry goes too (a Tart image's
	// unpack may be most of a disk); a pull running now keeps its own.
	out.PartialDownloads = int32(a.s.images.DropInterruptedPulls(ctx))
	after, _, err := a.s.images.Usage(ctx)
	if err != nil {
		return nil, err
	}
	out.FreedBytes = max(0, before-after)
	slog.Info("images pruned through the admin API", "images", len(out.Removed), "partial_downloads", out.PartialDownloads, "freed", out.FreedBytes)
	return out, nil
}

// resolveImage is the records of the image ref names: NotFound (with
// the name) when there is none.
func (a *adminServer) resolveImage(ctx context.Context, ref string) ([]imagestore.Image, error) {
	if ref == "" {
		return nil, fmt.Errorf("no image given: name one by reference, digest or ID: %w", errdefs.ErrInvalidArgument)
	}
	recs, err := a.s.images.Resolve(ctx, ref)
	if errdefs.IsNotFound(err) {
		return nil, fmt.Errorf("no image %q in the store (macvz image ls lists them): %w", ref, errdefs.ErrNotFound)
	}
	if err != nil {
		return nil, err
	}
	return recs, nil
}

// imageOf is one image ID and its names, with sizes and users.
func (a *adminServer) imageOf(ctx context.Context, recs []imagestore.Image, users map[string][]string, pins map[string]bool) (*adminapi.Image, error) {
	first := recs[0]
	kind := string(first.Kind)
	if kind == "" {
		kind = "oci"
	}
	img := &adminapi.Image{Id: first.ID(), Kind: kind, CreatedUnixNano: unixNano(first.CreatedAt), Pinned: pins[first.ID()]}
	for _, r := range recs {
		img.Names = append(img.Names, r.Name)
	}
	// Tags first, then digests, each sorted.
	sort.Slice(img.Names, func(i, j int) bool {
		di, dj := isDigestRef(img.Names[i]), isDigestRef(img.Names[j])
		if di != dj {
			return dj
		}
		return img.Names[i] < img.Names[j]
	})
	fp, err := a.s.images.Footprint(ctx, first)
	if err != nil {
		return nil, err
	}
	img.SizeBytes, img.DiskBytes = fp.Logical, fp.Allocated
	img.UsedBy = users[first.ID()]
	return img, nil
}

func isDigestRef(name string) bool { return strings.Contains(name, "@") }

// imageUsers maps image IDs to the sandboxes whose VM booted from them
// or that have a container of them (its image or an image volume).
func (a *adminServer) imageUsers() (map[string][]string, error) {
	out := map[string][]string{}
	add := func(id, sb string) {
		if id != "" && !slices.Contains(out[id], sb) {
			out[id] = append(out[id], sb)
		}
	}
	sbs, err := a.s.st.Sandboxes(nil)
	if err != nil {
		return nil, err
	}
	for _, sb := range sbs {
		add(sb.VMImage, sb.ID)
	}
	cs, err := a.s.st.Containers(nil)
	if err != nil {
		return nil, err
	}
	for _, c := range cs {
		add(c.ImageID, c.SandboxID)
		for _, v := range c.VolumeImages {
			add(v, c.SandboxID)
		}
	}
	return out, nil
}

// pinnedImages are the IDs of the images the configuration names: the
// node VM's image and the runtime handlers' vm_image. kubelet never
// pulls those (a handler's pod names no image), so prune keeps them.
func (a *adminServer) pinnedImages(ctx context.Context) map[string]bool {
	var refs []string
	if a.s.cfg.Node.Enabled && a.s.cfg.Node.Image != "" {
		refs = append(refs, a.s.cfg.Node.Image)
	}
	for _, h := range a.s.cfg.RuntimeHandlers {
		if h.VMImage != "" {
			refs = append(refs, h.VMImage)
		}
	}
	out := map[string]bool{}
	for _, ref := range refs {
		if recs, err := a.s.images.Resolve(ctx, ref); err == nil {
			out[recs[0].ID()] = true
		}
	}
	return out
}

// shortIDs is sandbox IDs as `crictl pods` shows them.
func shortIDs(ids []string) string {
	out := ""
	for i, id := range ids {
		if i > 0 {
			out += ", "
		}
		out += id[:min(13, len(id))]
	}
	return out
}

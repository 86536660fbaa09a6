package cri

import (
	"fmt"
	"log/slog"
	"path/filepath"
	"strings"

	"github.com/containerd/errdefs"

	"github.com/macvz/macvz/runtime/adminapi"
)

// ImportImage is `macvz image import SRC REF`: the store's Import, with
// its progress streamed.
func (a *adminServer) ImportImage(r *adminapi.ImportImageRequest, stream adminapi.Admin_ImportImageServer) error {
	ref := strings.TrimSpace(r.GetRef())
	if ref == "" || r.GetSource() == "" {
		return fmt.Errorf("ImportImage needs a source directory and an image reference: %w", errdefs.ErrInvalidArgument)
	}
	ps := newProgressStream(stream.Send, r.GetProgressIntervalMs())
	ctx := stream.Context()
	img, err := a.s.images.Import(ctx, r.GetSource(), ref, ps.option())
	if err != nil {
		return err
	}
	slog.Info("image imported through the admin API", "image", img.Name, "id", img.ID(), "source", r.GetSource())
	_, out, err := a.describeImage(ctx, img.ID())
	if err != nil {
		return err
	}
	return ps.finish(func(m *adminapi.PullImageProgress) { m.Image = out })
}

// PushImage is `macvz image push REF [SOURCE]`: the store's Push of
// SOURCE (REF itself when empty) to REF; a VM directory as SOURCE is
// imported under REF first.
func (a *adminServer) PushImage(r *adminapi.PushImageRequest, stream adminapi.Admin_PushImageServer) error {
	ref := strings.TrimSpace(r.GetRef())
	if ref == "" {
		return fmt.Errorf("PushImage needs the target image reference: %w", errdefs.ErrInvalidArgument)
	}
	src := strings.TrimSpace(r.GetSource())
	if src == "" {
		src = ref
	}
	ctx := stream.Context()
	if filepath.IsAbs(src) {
		ps := newProgressStream(stream.Send, r.GetProgressIntervalMs())
		img, err := a.s.images.Import(ctx, src, ref, ps.option())
		if err != nil {
			return err
		}
		src = img.Name
	}
	ps := newProgressStream(stream.Send, r.GetProgressIntervalMs())
	res, err := a.s.images.Push(ctx, src, ref, authOf(r.GetUsername(), r.GetPassword(), r.GetIdentityToken()), ps.option())
	if err != nil {
		return err
	}
	slog.Info("image pushed through the admin API", "image", src, "to", ref, "manifest", res.Manifest.Digest)
	_, out, err := a.describeImage(ctx, src)
	if err != nil {
		return err
	}
	return ps.finish(func(m *adminapi.PullImageProgress) {
		m.Image = out
		m.Pushed = &adminapi.PushResult{ManifestDigest: res.Manifest.Digest.String(), Uploaded: int32(res.Uploaded), Skipped: int32(res.Skipped), Bytes: res.Bytes}
	})
}

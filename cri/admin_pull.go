package cri

import (
	"fmt"
	"strings"
	"time"

	"github.com/containerd/errdefs"

	"github.com/macvz/macvz/runtime/adminapi"
	"github.com/macvz/macvz/vmimage/imagestore"
)

// PullImage is `macvz image pull`: the store's Pull, as CRI PullImage
// runs it (the same flights: joined, resumed), with its progress
// streamed. Sends happen on the progress goroutine while the pull runs,
// then the last one here once Pull returned (it waits for that
// goroutine), so they never overlap.
func (a *adminServer) PullImage(r *adminapi.PullImageRequest, stream adminapi.Admin_PullImageServer) error {
	ref := strings.TrimSpace(r.GetRef())
	if ref == "" {
		return fmt.Errorf("PullImage needs an image reference: %w", errdefs.ErrInvalidArgument)
	}
	var auth *imagestore.Auth
	if r.GetUsername() != "" || r.GetPassword() != "" || r.GetIdentityToken() != "" {
		auth = &imagestore.Auth{Username: r.GetUsername(), Password: r.GetPassword(), IdentityToken: r.GetIdentityToken()}
	}
	every := time.Duration(r.GetProgressIntervalMs()) * time.Millisecond
	if every <= 0 {
		every = 500 * time.Millisecond
	}
	var sendErr error
	var last imagestore.Progress
	ctx := stream.Context()
	img, err := a.s.images.Pull(ctx, ref, auth, imagestore.WithProgress(every, func(p imagestore.Progress) {
		last = p
		if sendErr == nil {
			sendErr = stream.Send(progressMessage(p))
		}
	}))
	if err != nil {
		return err
	}
	if sendErr != nil {
		return sendErr
	}
	_, out, err := a.describeImage(ctx, img.ID())
	if err != nil {
		return err
	}
	msg := progressMessage(last)
	msg.Image = out
	return stream.Send(msg)
}

func progressMessage(p imagestore.Progress) *adminapi.PullImageProgress {
	m := &adminapi.PullImageProgress{}
	if !p.Started.IsZero() {
		m.ElapsedNanos = int64(time.Since(p.Started))
	}
	for _, b := range p.Blobs {
		m.Blobs = append(m.Blobs, &adminapi.BlobProgress{
			Digest: b.Digest.String(), MediaType: b.MediaType, Size: b.Size, Done: b.Done, Fetched: b.Fetched, Complete: b.Complete,
		})
	}
	return m
}

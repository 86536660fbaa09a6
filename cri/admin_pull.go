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
// streamed.
func (a *adminServer) PullImage(r *adminapi.PullImageRequest, stream adminapi.Admin_PullImageServer) error {
	ref := strings.TrimSpace(r.GetRef())
	if ref == "" {
		return fmt.Errorf("PullImage needs an image reference: %w", errdefs.ErrInvalidArgument)
	}
	ps := newProgressStream(stream.Send, r.GetProgressIntervalMs())
	ctx := stream.Context()
	img, err := a.s.images.Pull(ctx, ref, authOf(r.GetUsername(), r.GetPassword(), r.GetIdentityToken()), ps.option())
	if err != nil {
		return err
	}
	_, out, err := a.describeImage(ctx, img.ID())
	if err != nil {
		return err
	}
	return ps.finish(func(m *adminapi.PullImageProgress) { m.Image = out })
}

// authOf is the registry credentials of an admin request, nil for none.
func authOf(user, password, token string) *imagestore.Auth {
	if user == "" && password == "" && token == "" {
		return nil
	}
	return &imagestore.Auth{Username: user, Password: password, IdentityToken: token}
}

// progressStream sends a long call's progress (pull, import, push) on
// its stream. Sends happen on the store's progress goroutine while the
// call runs, then the last one (finish) once the call returned, which
// waits for that goroutine: they never overlap.
type progressStream struct {
	send  func(*adminapi.PullImageProgress) error
	every time.Duration
	last  imagestore.Progress
	err   error
}

func newProgressStream(send func(*adminapi.PullImageProgress) error, everyMs int64) *progressStream {
	every := time.Duration(everyMs) * time.Millisecond
	if every <= 0 {
		every = 500 * time.Millisecond
	}
	return &progressStream{send: send, every: every}
}

func (p *progressStream) option() imagestore.PullOption {
	return imagestore.WithProgress(p.every, func(pr imagestore.Progress) {
		p.last = pr
		if p.err == nil {
			p.err = p.send(progressMessage(pr))
		}
	})
}

// finish sends the last message, filled in by set.
func (p *progressStream) finish(set func(*adminapi.PullImageProgress)) error {
	if p.err != nil {
		return p.err
	}
	m := progressMessage(p.last)
	set(m)
	return p.send(m)
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

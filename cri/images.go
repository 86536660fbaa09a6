package cri

import (
	"context"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/macvz/macvz/vmimage/imagestore"
)

// imageStore is what the service asks of the image store: exactly the
// methods it calls. *imagestore.Store is the real one; the unit tests
// have a fake.
type imageStore interface {
	VMImage(ctx context.Context, ref string) (imagestore.VMImage, error)
	Resolve(ctx context.Context, refOrID string) ([]imagestore.Image, error)
	Pull(ctx context.Context, ref string, auth *imagestore.Auth, opts ...imagestore.PullOption) (imagestore.Image, error)
	// Import and Push are `macvz image import` and `push`.
	Import(ctx context.Context, src, ref string, opts ...imagestore.PullOption) (imagestore.Image, error)
	Push(ctx context.Context, local, ref string, auth *imagestore.Auth, opts ...imagestore.PullOption) (imagestore.Pushed, error)
	Remove(ctx context.Context, refOrID string) error
	List(ctx context.Context) ([]imagestore.Image, error)
	Config(ctx context.Context, img imagestore.Image) ([]byte, error)
	OCIConfig(ctx context.Context, img imagestore.Image) (cfg ocispec.Image, ok bool, err error)
	Base(ctx context.Context, img imagestore.Image) (name string, ok bool)
	Usage(ctx context.Context) (bytes, inodes int64, err error)
	// Footprint is what one image takes: logical and allocated bytes.
	Footprint(ctx context.Context, img imagestore.Image) (imagestore.Footprint, error)
	Collect(ctx context.Context) error
	// DropInterruptedPulls removes what interrupted pulls kept to resume
	// from (none a running pull uses) and says how many.
	DropInterruptedPulls(ctx context.Context) int
	// Tree and RemoveTree are an image's file tree for image volumes.
	Tree(ctx context.Context, img imagestore.Image) (string, error)
	RemoveTree(ctx context.Context, img imagestore.Image) error
	Close() error
}

var _ imageStore = (*imagestore.Store)(nil)

// openImageStore opens the real image store.
func openImageStore(ctx context.Context, o imagestore.Options) (imageStore, error) {
	st, err := imagestore.Open(ctx, o)
	if err != nil {
		// Not a typed nil in the interface.
		return nil, err
	}
	return st, nil
}

// Package cri serves the CRI v1 RuntimeService and ImageService. It
// translates CRI calls into vmimage/ and runtime/ calls and nothing else;
// one file per verb group, as in containerd's internal/cri/server.
package cri

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/macvz/macvz/cri/config"
	"github.com/macvz/macvz/snapshotter"
	"github.com/macvz/macvz/vmimage"
	"github.com/macvz/macvz/vmimage/imagestore"
)

// Service implements runtimeapi.RuntimeServiceServer and
// runtimeapi.ImageServiceServer.
type Service struct {
	// The generated bases satisfy the interfaces' unexported methods;
	// every RPC is implemented explicitly in this package.
	runtimeapi.UnimplementedRuntimeServiceServer
	runtimeapi.UnimplementedImageServiceServer

	cfg    *config.Config
	sn     *snapshotter.Snapshotter
	images *imagestore.Store
}

// NewService opens the stores under cfg.Root and returns a ready service.
func NewService(ctx context.Context, cfg *config.Config) (*Service, error) {
	sn, err := snapshotter.New(filepath.Join(cfg.Root, "snapshots"))
	if err != nil {
		return nil, fmt.Errorf("snapshotter: %w", err)
	}
	images, err := imagestore.Open(ctx, imagestore.Options{
		Root:                   filepath.Join(cfg.Root, "images"),
		Snapshotter:            sn,
		Registry:               cfg.Registry,
		MaxConcurrentDownloads: cfg.Image.MaxConcurrentDownloads,
	})
	if err != nil {
		sn.Close()
		return nil, fmt.Errorf("image store: %w", err)
	}
	// A crash can leave half-made clones and unreferenced blobs; reclaim
	// them before serving, as containerd's GC does at start.
	if err := sn.Cleanup(ctx); err != nil {
		slog.Warn("snapshot cleanup failed", "err", err)
	}
	if err := images.Collect(ctx); err != nil {
		slog.Warn("image garbage collection failed", "err", err)
	}
	return &Service{cfg: cfg, sn: sn, images: images}, nil
}

// Close releases the stores. In-flight RPCs must have finished.
func (s *Service) Close() error {
	return errors.Join(s.images.Close(), s.sn.Close())
}

// imageUser is the user an image runs as by default: the OCI config's
// User, or a VM image's default process user.
func (s *Service) imageUser(ctx context.Context, img imagestore.Image) (string, error) {
	if img.Kind == vmimage.KindNone {
		cfg, _, err := s.images.OCIConfig(ctx, img)
		return cfg.Config.User, err
	}
	b, err := s.images.Config(ctx, img)
	if err != nil {
		return "", err
	}
	p, err := vmimage.DefaultProcess(img.Kind, b)
	if err != nil || p == nil {
		return "", err
	}
	return p.User, nil
}

// Package cri serves the CRI v1 RuntimeService and ImageService. It
// translates CRI calls into vmimage/ and runtime/ calls and nothing else;
// one file per verb group, as in containerd's internal/cri/server.
package cri

import (
	"context"

	"github.com/macvz/macvz/cri/config"
)

// Service implements runtimeapi.RuntimeServiceServer and
// runtimeapi.ImageServiceServer.
type Service struct {
	cfg *config.Config
}

// NewService opens the stores under cfg.Root and returns a ready service.
func NewService(ctx context.Context, cfg *config.Config) (*Service, error) {
	return &Service{cfg: cfg}, nil
}

// Close releases the stores. In-flight RPCs must have finished.
func (s *Service) Close() error {
	return nil
}

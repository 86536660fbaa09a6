package agent

import (
	"context"

	"google.golang.org/grpc/codes"

	api "github.com/macvz/macvz/runtime/agentapi"
)

// Seed sizes Reseed accepts: at least a full reseed's worth (256 bits),
// at most what is worth an ioctl.
const (
	minSeed = 32
	maxSeed = 512
)

// Reseed mixes the host's seed into the kernel's RNG and forces a
// reseed, so a guest restored from a state other guests were restored
// from too stops drawing the numbers they draw.
func (a *agent) Reseed(ctx context.Context, req *api.ReseedRequest) (*api.ReseedResponse, error) {
	if n := len(req.Seed); n < minSeed || n > maxSeed {
		return nil, errf(codes.InvalidArgument, "Reseed: a seed has %d to %d bytes, not %d", minSeed, maxSeed, n)
	}
	if err := reseedKernel(req.Seed); err != nil {
		return nil, osErr(codes.Internal, err, "reseeding the kernel's RNG")
	}
	a.cfg.log.Info("RNG reseeded", "bytes", len(req.Seed))
	return &api.ReseedResponse{}, nil
}

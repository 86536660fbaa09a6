//go:build !hostile || !linux

package agent

import (
	"io"
	"log/slog"

	api "github.com/macvz/macvz/runtime/agentapi"
)

// The production agent has no hostile mode: these hooks do nothing, and
// the code of hostile.go (the `hostile` build tag, test guests only) is
// not in the binary.

func hostileStart(*slog.Logger) {}

func hostileWritten(n, _ int) uint32 { return uint32(n) }

func hostileInterfaces(ifs []*api.NetInterface) []*api.NetInterface { return ifs }

func hostilePort(_ *slog.Logger, open func() (io.ReadWriteCloser, error)) func() (io.ReadWriteCloser, error) {
	return open
}

package sandbox

import (
	"context"
	"time"

	"github.com/macvz/macvz/runtime/agentapi"
	"github.com/macvz/macvz/runtime/shim"
	"github.com/macvz/macvz/runtime/shimapi"
)

// Shim is a connection to the shim of one sandbox's VM: its own verbs
// (the VM's life, the processes it watches) and the guest agent it
// forwards. *shim.Client is the real one.
type Shim interface {
	Pid() int
	Start(ctx context.Context, agentTimeout time.Duration) (*shimapi.StartResponse, error)
	State(ctx context.Context) (*shimapi.StateResponse, error)
	Stop(ctx context.Context, grace time.Duration) (*shimapi.VMExit, error)
	Save(ctx context.Context, path string) error
	Resume(ctx context.Context) error
	Shutdown(ctx context.Context) error
	Close() error
	// StartProcess creates, watches (output into logPath) and starts a
	// process in the guest, undoing it on failure; it returns the host
	// time the start was asked. RemoveProcess forgets one, idempotent.
	StartProcess(ctx context.Context, create *agentapi.CreateProcessRequest, logPath string) (time.Time, error)
	RemoveProcess(ctx context.Context, id *agentapi.ProcessID) error
	Shim() shimapi.ShimService
	Agent() agentapi.AgentClient
}

// Shims starts, finds and kills the shims of sandbox directories:
// runtime/shim in the daemon, a fake in unit tests.
type Shims interface {
	Spawn(ctx context.Context, o shim.SpawnOptions) (Shim, error)
	Connect(ctx context.Context, dir string) (Shim, error)
	// Kill ends whatever shim and VM process a directory's pid files
	// name; nothing running is fine.
	Kill(ctx context.Context, dir string) error
}

// processShims are the real shims: processes of their own that outlive
// the daemon.
type processShims struct{}

func (processShims) Spawn(ctx context.Context, o shim.SpawnOptions) (Shim, error) {
	c, err := shim.Spawn(ctx, o)
	if err != nil {
		return nil, err
	}
	return c, nil
}

func (processShims) Connect(ctx context.Context, dir string) (Shim, error) {
	c, err := shim.Connect(ctx, dir)
	if err != nil {
		return nil, err
	}
	return c, nil
}

func (processShims) Kill(ctx context.Context, dir string) error { return shim.Kill(ctx, dir) }

package shim

import (
	"context"
	"time"

	"github.com/macvz/macvz/runtime/agentapi"
	"github.com/macvz/macvz/runtime/shimapi"
)

// Conn is a connection to the shim of one VM: its own verbs (the VM's
// life, the processes it watches) and the guest agent it forwards.
// *Client is the real one; shimtest has a fake for unit tests.
type Conn interface {
	Pid() int
	Start(ctx context.Context, agentTimeout time.Duration) (*shimapi.StartResponse, error)
	State(ctx context.Context) (*shimapi.StateResponse, error)
	Stop(ctx context.Context, grace time.Duration) (*shimapi.VMExit, error)
	Save(ctx context.Context, path string) error
	SaveRAMFile(ctx context.Context, path string) error
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

var _ Conn = (*Client)(nil)

// Launcher starts, finds and kills the shims of VM directories.
type Launcher interface {
	Spawn(ctx context.Context, o SpawnOptions) (Conn, error)
	Connect(ctx context.Context, dir string) (Conn, error)
	// Kill ends whatever shim and VM process a directory's pid files
	// name; nothing running is fine.
	Kill(ctx context.Context, dir string) error
}

// Processes launches shims as processes of their own, which outlive the
// daemon (Spawn, Connect and Kill of this package).
type Processes struct {
	// AgentCalls, when set, is told of the guest agent calls of every
	// client it returns (SpawnOptions.AgentCalls).
	AgentCalls AgentCallObserver
}

func (p Processes) Spawn(ctx context.Context, o SpawnOptions) (Conn, error) {
	if o.AgentCalls == nil {
		o.AgentCalls = p.AgentCalls
	}
	c, err := Spawn(ctx, o)
	if err != nil {
		return nil, err
	}
	return c, nil
}

func (p Processes) Connect(ctx context.Context, dir string) (Conn, error) {
	c, err := connect(ctx, dir, p.AgentCalls)
	if err != nil {
		return nil, err
	}
	return c, nil
}

func (Processes) Kill(ctx context.Context, dir string) error { return Kill(ctx, dir) }

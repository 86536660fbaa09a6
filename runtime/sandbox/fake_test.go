package sandbox

import (
	"context"
	"fmt"
	"os"
	"sync"
	"time"

	"github.com/containerd/errdefs"

	"github.com/macvz/macvz/runtime/agentapi"
	"github.com/macvz/macvz/runtime/shim"
	"github.com/macvz/macvz/runtime/shimapi"
	"github.com/macvz/macvz/runtime/vm"
)

// fakeShims stands in for runtime/shim's processes: a spawned shim is a
// fakeShim kept by directory until killed. It runs no VM; what the
// controller asked of it is recorded for the tests to check.
type fakeShims struct {
	mu      sync.Mutex
	running map[string]*fakeShim // by sandbox directory
	spawned []shim.SpawnOptions
	killed  []string
	// startErr, when set, fails the next Start.
	startErr error
}

func newFakeShims() *fakeShims { return &fakeShims{running: map[string]*fakeShim{}} }

func (f *fakeShims) Spawn(ctx context.Context, o shim.SpawnOptions) (Shim, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.running[o.Dir] != nil {
		return nil, fmt.Errorf("a shim already runs in %s: %w", o.Dir, errdefs.ErrAlreadyExists)
	}
	c := &fakeShim{f: f, dir: o.Dir, spec: o.Spec, agent: &fakeAgent{}, state: shimapi.VMState_VM_CREATED}
	f.running[o.Dir] = c
	f.spawned = append(f.spawned, o)
	return c, nil
}

func (f *fakeShims) Connect(ctx context.Context, dir string) (Shim, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if c := f.running[dir]; c != nil {
		return c, nil
	}
	return nil, fmt.Errorf("no shim in %s: %w", dir, errdefs.ErrNotFound)
}

func (f *fakeShims) Kill(ctx context.Context, dir string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.killed = append(f.killed, dir)
	delete(f.running, dir)
	return nil
}

// shimOf is the running fake shim of a directory, nil when none runs.
func (f *fakeShims) shimOf(dir string) *fakeShim {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.running[dir]
}

func (f *fakeShims) lastSpawn() shim.SpawnOptions {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.spawned[len(f.spawned)-1]
}

// fakeShim is one fake shim and its VM's state.
type fakeShim struct {
	f     *fakeShims
	dir   string
	spec  *vm.Spec
	agent *fakeAgent

	mu                                       sync.Mutex
	state                                    shimapi.VMState
	exit                                     *shimapi.VMExit
	saves, resumes, stops, shutdowns, closes int
	exits                                    map[string]*shimapi.ProcessExit // container ID → recorded exit
}

func (c *fakeShim) Pid() int { return 4242 }

func (c *fakeShim) Start(ctx context.Context, agentTimeout time.Duration) (*shimapi.StartResponse, error) {
	c.f.mu.Lock()
	err := c.f.startErr
	c.f.startErr = nil
	c.f.mu.Unlock()
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.state = shimapi.VMState_VM_RUNNING
	return &shimapi.StartResponse{}, nil
}

func (c *fakeShim) State(ctx context.Context) (*shimapi.StateResponse, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return &shimapi.StateResponse{State: c.state, Exit: c.exit}, nil
}

func (c *fakeShim) Stop(ctx context.Context, grace time.Duration) (*shimapi.VMExit, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.stops++
	c.state = shimapi.VMState_VM_STOPPED
	c.exit = &shimapi.VMExit{Reason: "stopped", Clean: true}
	return c.exit, nil
}

// Save writes a state file as a backend would (the warm store checks it
// exists).
func (c *fakeShim) Save(ctx context.Context, path string) error {
	c.mu.Lock()
	c.saves++
	c.mu.Unlock()
	return os.WriteFile(path, []byte("fake VM state"), 0o600)
}

func (c *fakeShim) Resume(ctx context.Context) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.resumes++
	return nil
}

func (c *fakeShim) Shutdown(ctx context.Context) error {
	c.mu.Lock()
	c.shutdowns++
	c.mu.Unlock()
	c.f.mu.Lock()
	delete(c.f.running, c.dir)
	c.f.mu.Unlock()
	return nil
}

func (c *fakeShim) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.closes++
	return nil
}

func (c *fakeShim) StartProcess(ctx context.Context, create *agentapi.CreateProcessRequest, logPath string) (time.Time, error) {
	return time.Now(), nil
}

func (c *fakeShim) RemoveProcess(ctx context.Context, id *agentapi.ProcessID) error { return nil }

func (c *fakeShim) Shim() shimapi.ShimService { return fakeShimService{c: c} }

func (c *fakeShim) Agent() agentapi.AgentClient { return c.agent }

// stopVM makes the fake VM stop by itself (a guest power-off, a crash).
func (c *fakeShim) stopVM(reason string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.state = shimapi.VMState_VM_STOPPED
	c.exit = &shimapi.VMExit{Reason: reason}
}

// fakeShimService answers the shim verb the controller calls itself;
// any other one panics through the nil embedded interface.
type fakeShimService struct {
	shimapi.ShimService
	c *fakeShim
}

func (s fakeShimService) ProcessStatus(ctx context.Context, r *shimapi.ProcessStatusRequest) (*shimapi.ProcessStatusResponse, error) {
	s.c.mu.Lock()
	defer s.c.mu.Unlock()
	if e := s.c.exits[r.GetContainerId()]; e != nil {
		return &shimapi.ProcessStatusResponse{Exit: e}, nil
	}
	return nil, fmt.Errorf("process %s: %w", r.GetContainerId(), errdefs.ErrNotFound)
}

// fakeAgent records the guest setup calls; the embedded nil interface
// makes any other call panic, so a test notices a call it did not expect.
type fakeAgent struct {
	agentapi.AgentClient

	mu       sync.Mutex
	network  []*agentapi.ConfigureNetworkRequest
	hostname []string
	resolv   []*agentapi.WriteResolvConfRequest
	mounts   []*agentapi.MountShareRequest
	sysctls  []map[string]string
}

func (a *fakeAgent) ConfigureNetwork(ctx context.Context, r *agentapi.ConfigureNetworkRequest) (*agentapi.ConfigureNetworkResponse, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.network = append(a.network, r)
	return &agentapi.ConfigureNetworkResponse{}, nil
}

func (a *fakeAgent) SetHostname(ctx context.Context, r *agentapi.SetHostnameRequest) (*agentapi.SetHostnameResponse, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.hostname = append(a.hostname, r.GetHostname())
	return &agentapi.SetHostnameResponse{}, nil
}

func (a *fakeAgent) WriteResolvConf(ctx context.Context, r *agentapi.WriteResolvConfRequest) (*agentapi.WriteResolvConfResponse, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.resolv = append(a.resolv, r)
	return &agentapi.WriteResolvConfResponse{}, nil
}

func (a *fakeAgent) MountShare(ctx context.Context, r *agentapi.MountShareRequest) (*agentapi.MountShareResponse, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.mounts = append(a.mounts, r)
	return &agentapi.MountShareResponse{}, nil
}

func (a *fakeAgent) SetSysctls(ctx context.Context, r *agentapi.SetSysctlsRequest) (*agentapi.SetSysctlsResponse, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.sysctls = append(a.sysctls, r.GetSysctls())
	return &agentapi.SetSysctlsResponse{}, nil
}

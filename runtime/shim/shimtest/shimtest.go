// Package shimtest is a fake of runtime/shim for unit tests: a Launcher
// whose shims run no VM and whose guest agent only records what it was
// asked, the way Kata's unit tests run against a mock agent.
package shimtest

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

// Launcher is a fake shim.Launcher: a spawned shim is a *Shim kept by
// directory until it is killed or shut down.
type Launcher struct {
	mu       sync.Mutex
	running  map[string]*Shim
	spawned  []shim.SpawnOptions
	killed   []string
	startErr error
	// oldAgents: spawned shims' guests answer Reseed Unimplemented.
	oldAgents bool
}

var _ shim.Launcher = (*Launcher)(nil)

// New returns a launcher with no shim running.
func New() *Launcher { return &Launcher{running: map[string]*Shim{}} }

func (l *Launcher) Spawn(ctx context.Context, o shim.SpawnOptions) (shim.Conn, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.running[o.Dir] != nil {
		return nil, fmt.Errorf("a shim already runs in %s: %w", o.Dir, errdefs.ErrAlreadyExists)
	}
	c := &Shim{l: l, Dir: o.Dir, Spec: o.Spec, Guest: &Agent{noReseed: l.oldAgents}, state: shimapi.VMState_VM_CREATED}
	l.running[o.Dir] = c
	l.spawned = append(l.spawned, o)
	return c, nil
}

func (l *Launcher) Connect(ctx context.Context, dir string) (shim.Conn, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if c := l.running[dir]; c != nil {
		return c, nil
	}
	return nil, fmt.Errorf("no shim in %s: %w", dir, errdefs.ErrNotFound)
}

func (l *Launcher) Kill(ctx context.Context, dir string) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.killed = append(l.killed, dir)
	delete(l.running, dir)
	return nil
}

// FailNextStart makes the next Start of any shim fail with err.
func (l *Launcher) FailNextStart(err error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.startErr = err
}

// OldAgents makes the guests of shims spawned from now on agents from
// before Reseed (it answers Unimplemented).
func (l *Launcher) OldAgents() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.oldAgents = true
}

// Running is the shim running for a directory, nil when none is.
func (l *Launcher) Running(dir string) *Shim {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.running[dir]
}

// Spawned are the options of every Spawn so far, in order.
func (l *Launcher) Spawned() []shim.SpawnOptions {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]shim.SpawnOptions(nil), l.spawned...)
}

// LastSpawn is the options of the latest Spawn.
func (l *Launcher) LastSpawn() shim.SpawnOptions {
	s := l.Spawned()
	if len(s) == 0 {
		return shim.SpawnOptions{}
	}
	return s[len(s)-1]
}

// Killed are the directories Kill was called for, in order.
func (l *Launcher) Killed() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]string(nil), l.killed...)
}

// Shim is one fake shim and the state of its (absent) VM.
type Shim struct {
	l    *Launcher
	Dir  string
	Spec *vm.Spec
	// Guest is its fake guest agent.
	Guest *Agent

	mu        sync.Mutex
	state     shimapi.VMState
	exit      *shimapi.VMExit
	calls     Calls
	exits     map[string]*shimapi.ProcessExit
	started   []*agentapi.CreateProcessRequest
	logPaths  []string
	removed   []*agentapi.ProcessID
	procError error
	saveErr   error
	onSave    func()
	paused    bool
	watched   []*shimapi.WatchProcessRequest
	targets   []int64
}

var _ shim.Conn = (*Shim)(nil)

// Calls counts the calls of a shim's VM verbs.
type Calls struct {
	Starts, Saves, SavesRAMFile, Resumes, Stops, Shutdowns, Closes int
}

// Calls returns the counts so far.
func (c *Shim) Calls() Calls {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.calls
}

func (c *Shim) Pid() int { return 4242 }

func (c *Shim) Start(ctx context.Context, agentTimeout time.Duration) (*shimapi.StartResponse, error) {
	c.l.mu.Lock()
	err := c.l.startErr
	c.l.startErr = nil
	c.l.mu.Unlock()
	c.mu.Lock()
	defer c.mu.Unlock()
	c.calls.Starts++
	if err != nil {
		return nil, err
	}
	c.state = shimapi.VMState_VM_RUNNING
	return &shimapi.StartResponse{}, nil
}

func (c *Shim) State(ctx context.Context) (*shimapi.StateResponse, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return &shimapi.StateResponse{Id: c.Spec.ID, State: c.state, Exit: c.exit, AgentConnected: c.state == shimapi.VMState_VM_RUNNING}, nil
}

func (c *Shim) Stop(ctx context.Context, grace time.Duration) (*shimapi.VMExit, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.calls.Stops++
	c.state = shimapi.VMState_VM_STOPPED
	c.exit = &shimapi.VMExit{Reason: "stopped", Clean: true}
	return c.exit, nil
}

// Save writes a state file, as a backend does (FailSave: fails instead),
// and leaves the VM paused.
func (c *Shim) Save(ctx context.Context, path string) error {
	c.mu.Lock()
	c.calls.Saves++
	err, onSave := c.saveErr, c.onSave
	c.paused = true
	c.mu.Unlock()
	if onSave != nil {
		onSave()
	}
	if err != nil {
		return err
	}
	return os.WriteFile(path, []byte("fake VM state"), 0o600)
}

// SaveRAMFile is Save, recorded apart (SavesRAMFile), writing the RAM
// file a backend that can would write beside the state.
func (c *Shim) SaveRAMFile(ctx context.Context, path string) error {
	c.mu.Lock()
	c.calls.SavesRAMFile++
	c.mu.Unlock()
	if err := c.Save(ctx, path); err != nil {
		return err
	}
	return os.WriteFile(path+vm.RAMFileSuffix, []byte("fake VM RAM"), 0o600)
}

func (c *Shim) Resume(ctx context.Context) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.calls.Resumes++
	c.paused = false
	return nil
}

// FailSave makes Save fail with err (nil: succeed again).
func (c *Shim) FailSave(err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.saveErr = err
}

// OnSave makes Save call f first (nil: nothing), as something that
// happens while a VM's state is being saved (a caller giving up).
func (c *Shim) OnSave(f func()) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.onSave = f
}

// Paused says whether the VM is paused (saved and not resumed).
func (c *Shim) Paused() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.paused
}

// Shutdown ends the shim: it is no longer running.
func (c *Shim) Shutdown(ctx context.Context) error {
	c.mu.Lock()
	c.calls.Shutdowns++
	c.mu.Unlock()
	c.l.mu.Lock()
	if c.l.running[c.Dir] == c {
		delete(c.l.running, c.Dir)
	}
	c.l.mu.Unlock()
	return nil
}

func (c *Shim) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.calls.Closes++
	return nil
}

// StartProcess records the process; FailProcesses makes it fail.
func (c *Shim) StartProcess(ctx context.Context, create *agentapi.CreateProcessRequest, logPath string) (time.Time, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.procError != nil {
		return time.Time{}, c.procError
	}
	c.started = append(c.started, create)
	c.logPaths = append(c.logPaths, logPath)
	return time.Now(), nil
}

func (c *Shim) RemoveProcess(ctx context.Context, id *agentapi.ProcessID) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.removed = append(c.removed, id)
	return nil
}

// FailProcesses makes StartProcess fail with err (nil: succeed again).
func (c *Shim) FailProcesses(err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.procError = err
}

// Started are the processes StartProcess started and their log paths.
func (c *Shim) Started() ([]*agentapi.CreateProcessRequest, []string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]*agentapi.CreateProcessRequest(nil), c.started...), append([]string(nil), c.logPaths...)
}

// Removed are the processes RemoveProcess was called for.
func (c *Shim) Removed() []*agentapi.ProcessID {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]*agentapi.ProcessID(nil), c.removed...)
}

// StopVM makes the VM stop by itself (a guest power-off, a crash).
func (c *Shim) StopVM(reason string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.state = shimapi.VMState_VM_STOPPED
	c.exit = &shimapi.VMExit{Reason: reason}
}

// SetExit records the exit of a container's process, as the shim does
// when it sees it.
func (c *Shim) SetExit(containerID string, e *shimapi.ProcessExit) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.exits == nil {
		c.exits = map[string]*shimapi.ProcessExit{}
	}
	c.exits[containerID] = e
}

func (c *Shim) Shim() shimapi.ShimService { return shimService{c: c} }

func (c *Shim) Agent() agentapi.AgentClient { return c.Guest }

// shimService answers ProcessStatus from the recorded exits; any other
// verb panics through the nil embedded interface, so a test sees a call
// it did not expect.
type shimService struct {
	shimapi.ShimService
	c *Shim
}

// SetMemory records the balloon target (MemoryTargets) after the real
// shim's checks: a running VM, no more than it booted with.
func (s shimService) SetMemory(ctx context.Context, r *shimapi.SetMemoryRequest) (*shimapi.SetMemoryResponse, error) {
	s.c.mu.Lock()
	defer s.c.mu.Unlock()
	if s.c.state != shimapi.VMState_VM_RUNNING {
		return nil, fmt.Errorf("the VM is not running: %w", errdefs.ErrFailedPrecondition)
	}
	if err := vm.CheckMemoryTarget(s.c.Spec, r.TargetBytes); err != nil {
		return nil, err
	}
	s.c.targets = append(s.c.targets, r.TargetBytes)
	return &shimapi.SetMemoryResponse{}, nil
}

// MemoryTargets are the balloon targets SetMemory was given, in order.
func (c *Shim) MemoryTargets() []int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]int64(nil), c.targets...)
}

// WatchProcess records the call (Watched).
func (s shimService) WatchProcess(ctx context.Context, r *shimapi.WatchProcessRequest) (*shimapi.WatchProcessResponse, error) {
	s.c.mu.Lock()
	defer s.c.mu.Unlock()
	s.c.watched = append(s.c.watched, r)
	return &shimapi.WatchProcessResponse{}, nil
}

// Watched are the WatchProcess calls so far.
func (c *Shim) Watched() []*shimapi.WatchProcessRequest {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]*shimapi.WatchProcessRequest(nil), c.watched...)
}

func (s shimService) ProcessStatus(ctx context.Context, r *shimapi.ProcessStatusRequest) (*shimapi.ProcessStatusResponse, error) {
	s.c.mu.Lock()
	defer s.c.mu.Unlock()
	if e := s.c.exits[r.GetContainerId()]; e != nil {
		return &shimapi.ProcessStatusResponse{ContainerId: r.GetContainerId(), State: shimapi.ProcessState_PROCESS_EXITED, Exit: e}, nil
	}
	return nil, fmt.Errorf("process %s: %w", r.GetContainerId(), errdefs.ErrNotFound)
}

// Agent is a fake guest agent that records the guest setup calls; any
// other call panics through the nil embedded interface.
type Agent struct {
	agentapi.AgentClient

	mu       sync.Mutex
	network  []*agentapi.ConfigureNetworkRequest
	hostname []string
	resolv   []*agentapi.WriteResolvConfRequest
	mounts   []*agentapi.MountShareRequest
	sysctls  []map[string]string
	signals  []string
	unmounts []string
	updates  []*agentapi.UpdateResourcesRequest
	reseeds  int
	noReseed bool
	modWaits int
	// procs are the guest processes CreateProcess made (by container
	// ID), ran are those StartProcess ran: each exits 0 at once.
	procs map[string]*agentapi.CreateProcessRequest
	ran   []*agentapi.CreateProcessRequest
}

// Setup is what the guest was told so far.
type Setup struct {
	Network   []*agentapi.ConfigureNetworkRequest
	Hostnames []string
	Resolv    []*agentapi.WriteResolvConfRequest
	Mounts    []*agentapi.MountShareRequest
	Sysctls   []map[string]string
	// Signals are KillAll's ("<container> <signal number>"), Unmounts
	// UnmountShare's tags.
	Signals  []string
	Unmounts []string
	// Updates are UpdateResources' requests.
	Updates []*agentapi.UpdateResourcesRequest
	// Reseeds counts Reseed calls; ModuleWaits Info calls that waited
	// for the guest's modules (wait_modules).
	Reseeds     int
	ModuleWaits int
	// Ran are the processes started through the agent itself (not the
	// shim's StartProcess), in order; Live those not yet removed.
	Ran  []*agentapi.CreateProcessRequest
	Live int
}

// Setup returns the calls recorded so far.
func (a *Agent) Setup() Setup {
	a.mu.Lock()
	defer a.mu.Unlock()
	return Setup{
		Network: append([]*agentapi.ConfigureNetworkRequest(nil), a.network...), Hostnames: append([]string(nil), a.hostname...),
		Resolv: append([]*agentapi.WriteResolvConfRequest(nil), a.resolv...), Mounts: append([]*agentapi.MountShareRequest(nil), a.mounts...),
		Sysctls: append([]map[string]string(nil), a.sysctls...),
		Signals: append([]string(nil), a.signals...), Unmounts: append([]string(nil), a.unmounts...),
		Updates: append([]*agentapi.UpdateResourcesRequest(nil), a.updates...),
		Reseeds: a.reseeds, ModuleWaits: a.modWaits,
		Ran: append([]*agentapi.CreateProcessRequest(nil), a.ran...), Live: len(a.procs),
	}
}

func procKey(id *agentapi.ProcessID) string { return id.GetContainerId() + "/" + id.GetExecId() }

// CreateProcess records a process; StartProcess runs it (it exits 0 at
// once), WaitProcess reports that, RemoveProcess forgets it.
func (a *Agent) CreateProcess(ctx context.Context, r *agentapi.CreateProcessRequest) (*agentapi.CreateProcessResponse, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.procs == nil {
		a.procs = map[string]*agentapi.CreateProcessRequest{}
	}
	if a.procs[procKey(r.GetId())] != nil {
		return nil, fmt.Errorf("process %s: %w", procKey(r.GetId()), errdefs.ErrAlreadyExists)
	}
	a.procs[procKey(r.GetId())] = r
	return &agentapi.CreateProcessResponse{}, nil
}

func (a *Agent) StartProcess(ctx context.Context, r *agentapi.StartProcessRequest) (*agentapi.StartProcessResponse, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	p := a.procs[procKey(r.GetId())]
	if p == nil {
		return nil, fmt.Errorf("process %s: %w", procKey(r.GetId()), errdefs.ErrNotFound)
	}
	a.ran = append(a.ran, p)
	return &agentapi.StartProcessResponse{}, nil
}

func (a *Agent) WaitProcess(ctx context.Context, r *agentapi.WaitProcessRequest) (*agentapi.WaitProcessResponse, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.procs[procKey(r.GetId())] == nil {
		return nil, fmt.Errorf("process %s: %w", procKey(r.GetId()), errdefs.ErrNotFound)
	}
	return &agentapi.WaitProcessResponse{Status: &agentapi.ExitStatus{}}, nil
}

// SignalProcess: the fake's processes have exited already.
func (a *Agent) SignalProcess(ctx context.Context, r *agentapi.SignalProcessRequest) (*agentapi.SignalProcessResponse, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.procs[procKey(r.GetId())] == nil {
		return nil, fmt.Errorf("process %s: %w", procKey(r.GetId()), errdefs.ErrNotFound)
	}
	return &agentapi.SignalProcessResponse{}, nil
}

func (a *Agent) RemoveProcess(ctx context.Context, r *agentapi.RemoveProcessRequest) (*agentapi.RemoveProcessResponse, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	delete(a.procs, procKey(r.GetId()))
	return &agentapi.RemoveProcessResponse{}, nil
}

// Info answers as a Linux guest whose modules are all loaded.
func (a *Agent) Info(ctx context.Context, r *agentapi.InfoRequest) (*agentapi.InfoResponse, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if r.GetWaitModules() {
		a.modWaits++
	}
	return &agentapi.InfoResponse{AgentVersion: "shimtest", Os: "linux", Arch: "amd64", Pid1: true, ModulesLoadedUptimeNs: int64(time.Second)}, nil
}

func (a *Agent) KillAll(ctx context.Context, r *agentapi.KillAllRequest) (*agentapi.KillAllResponse, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.signals = append(a.signals, fmt.Sprintf("%s %d", r.GetContainerId(), r.GetSignal()))
	return &agentapi.KillAllResponse{Signaled: 1}, nil
}

func (a *Agent) UnmountShare(ctx context.Context, r *agentapi.UnmountShareRequest) (*agentapi.UnmountShareResponse, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.unmounts = append(a.unmounts, r.GetTag())
	return &agentapi.UnmountShareResponse{}, nil
}

func (a *Agent) UpdateResources(ctx context.Context, r *agentapi.UpdateResourcesRequest) (*agentapi.UpdateResourcesResponse, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.updates = append(a.updates, r)
	return &agentapi.UpdateResourcesResponse{}, nil
}

func (a *Agent) Reseed(ctx context.Context, r *agentapi.ReseedRequest) (*agentapi.ReseedResponse, error) {
	if a.noReseed {
		return nil, fmt.Errorf("Reseed: %w", errdefs.ErrNotImplemented)
	}
	if len(r.GetSeed()) < 32 {
		return nil, fmt.Errorf("Reseed: %d bytes of seed: %w", len(r.GetSeed()), errdefs.ErrInvalidArgument)
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	a.reseeds++
	return &agentapi.ReseedResponse{}, nil
}

func (a *Agent) ConfigureNetwork(ctx context.Context, r *agentapi.ConfigureNetworkRequest) (*agentapi.ConfigureNetworkResponse, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.network = append(a.network, r)
	return &agentapi.ConfigureNetworkResponse{}, nil
}

func (a *Agent) SetHostname(ctx context.Context, r *agentapi.SetHostnameRequest) (*agentapi.SetHostnameResponse, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.hostname = append(a.hostname, r.GetHostname())
	return &agentapi.SetHostnameResponse{}, nil
}

func (a *Agent) WriteResolvConf(ctx context.Context, r *agentapi.WriteResolvConfRequest) (*agentapi.WriteResolvConfResponse, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.resolv = append(a.resolv, r)
	return &agentapi.WriteResolvConfResponse{}, nil
}

func (a *Agent) MountShare(ctx context.Context, r *agentapi.MountShareRequest) (*agentapi.MountShareResponse, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.mounts = append(a.mounts, r)
	return &agentapi.MountShareResponse{}, nil
}

func (a *Agent) SetSysctls(ctx context.Context, r *agentapi.SetSysctlsRequest) (*agentapi.SetSysctlsResponse, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.sysctls = append(a.sysctls, r.GetSysctls())
	return &agentapi.SetSysctlsResponse{}, nil
}

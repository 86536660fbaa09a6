package cri

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/macvz/macvz/cri/config"
	"github.com/macvz/macvz/runtime/agentapi"
	"github.com/macvz/macvz/runtime/shim"
	"github.com/macvz/macvz/runtime/shim/shimtest"
	"github.com/macvz/macvz/runtime/shimapi"
	"github.com/macvz/macvz/vmimage"
	"github.com/macvz/macvz/vmimage/imagestore"
)

// The per-verb unit tests drive the real Service, over a real bbolt
// store and snapshotter in a temporary directory, with fakes of what is
// below it: shimtest's shims (no VM; a guest agent that records calls)
// and an image store holding one Linux VM image. The pod network's
// configuration directory is empty, so the pods are host-network ones.

// guestRef names the fake store's VM image.
const guestRef = "example.com/guest:1"

// guestProcess is the image's default process.
var guestProcess = &vmimage.Process{
	Entrypoint: []string{"/bin/server"}, Cmd: []string{"--port", "80"},
	Env: []string{"A=1"}, WorkingDir: "/srv", User: "33",
}

// requireRoot skips a test that mounts (the sandbox share is a tmpfs)
// outside CI, and fails it under CI, which runs the unit tests as root.
func requireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		if os.Getenv("CI") == "true" {
			t.Fatal("CI runs the unit tests as root")
		}
		t.Skip("needs root (the sandbox share is a tmpfs mount): run as root")
	}
}

// fake is a Service over fakes, and the fakes.
type fake struct {
	*Service
	shims  *launcher
	images *fakeImages
	// imageOpts are the options the service opened its image store with.
	imageOpts imagestore.Options
}

// newFake is a Service over fresh stores in a temporary directory, with
// fake shims and the fake image store; the runtime handler "guest" boots
// guestRef at RunPodSandbox. opts change the configuration. Its cleanup
// undoes the shares' mounts.
func newFake(t testing.TB, opts ...func(*config.Config)) *fake {
	t.Helper()
	requireRoot(t)
	dir := t.TempDir()
	cfg := config.Default()
	cfg.Root, cfg.State, cfg.Socket = filepath.Join(dir, "root"), filepath.Join(dir, "state"), filepath.Join(dir, "s.sock")
	cfg.Network.ConfDir, cfg.Network.CacheDir = filepath.Join(dir, "net.d"), filepath.Join(dir, "cni")
	cfg.VM.WarmStart = false // every boot is a cold one
	cfg.RuntimeHandlers = map[string]config.RuntimeHandler{"guest": {VMImage: guestRef}}
	for _, o := range opts {
		o(cfg)
	}
	if err := cfg.ResolvePaths(); err != nil {
		t.Fatal(err)
	}
	f := &fake{shims: &launcher{Launcher: shimtest.New()}, images: newFakeImages(t)}
	s, err := newService(context.Background(), cfg, deps{
		shims: f.shims,
		openImages: func(_ context.Context, o imagestore.Options) (imageStore, error) {
			f.imageOpts = o
			f.images.inUse = o.InUse
			return f.images, nil
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	f.Service = s
	t.Cleanup(func() {
		s.Close()
		unmountBelow(t, dir)
	})
	return f
}

// grpcCode is the code the server answers an error with (errors.go).
func grpcCode(err error) codes.Code {
	if err == nil {
		return codes.OK
	}
	return status.Code(toGRPC(err))
}

// hostPod is a host-network pod's config: its own hostname, DNS, sysctls
// and resources, and a log directory.
func hostPod(t testing.TB, name string) *runtimeapi.PodSandboxConfig {
	return &runtimeapi.PodSandboxConfig{
		Metadata:     &runtimeapi.PodSandboxMetadata{Name: name, Namespace: "ns", Uid: "uid-" + name},
		Hostname:     name + "-host",
		LogDirectory: t.TempDir(),
		DnsConfig:    &runtimeapi.DNSConfig{Servers: []string{"10.0.0.10"}, Searches: []string{"ns.svc"}},
		Labels:       map[string]string{"app": name},
		Linux: &runtimeapi.LinuxPodSandboxConfig{
			Sysctls:         map[string]string{"net.ipv4.ping_group_range": "0 1"},
			Resources:       &runtimeapi.LinuxContainerResources{CpuQuota: 150000, CpuPeriod: 100000, MemoryLimitInBytes: 320 << 20},
			SecurityContext: &runtimeapi.LinuxSandboxSecurityContext{NamespaceOptions: &runtimeapi.NamespaceOption{Network: runtimeapi.NamespaceMode_NODE}},
		},
	}
}

// runPod runs a pod; handler "guest" boots its VM now, "" at its first
// container's start.
func (f *fake) runPod(t testing.TB, pod *runtimeapi.PodSandboxConfig, handler string) string {
	t.Helper()
	r, err := f.RunPodSandbox(context.Background(), &runtimeapi.RunPodSandboxRequest{Config: pod, RuntimeHandler: handler})
	if err != nil {
		t.Fatalf("RunPodSandbox: %v", err)
	}
	return r.GetPodSandboxId()
}

// createCtr creates a container of guestRef in a pod.
func (f *fake) createCtr(t testing.TB, sbID string, pod *runtimeapi.PodSandboxConfig, cfg *runtimeapi.ContainerConfig) string {
	t.Helper()
	if cfg.GetImage() == nil {
		cfg.Image = &runtimeapi.ImageSpec{Image: guestRef}
	}
	r, err := f.CreateContainer(context.Background(), &runtimeapi.CreateContainerRequest{PodSandboxId: sbID, Config: cfg, SandboxConfig: pod})
	if err != nil {
		t.Fatalf("CreateContainer: %v", err)
	}
	return r.GetContainerId()
}

// startedCtr is a running process container in a running pod.
func (f *fake) startedCtr(t *testing.T, name string) (sbID, ctrID string) {
	t.Helper()
	pod := hostPod(t, name)
	sbID = f.runPod(t, pod, "guest")
	ctrID = f.createCtr(t, sbID, pod, &runtimeapi.ContainerConfig{Metadata: &runtimeapi.ContainerMetadata{Name: "app"}, LogPath: "app/0.log"})
	if _, err := f.StartContainer(context.Background(), &runtimeapi.StartContainerRequest{ContainerId: ctrID}); err != nil {
		t.Fatalf("StartContainer: %v", err)
	}
	return sbID, ctrID
}

// shimOf is the fake shim of a sandbox's VM, nil when none runs.
func (f *fake) shimOf(t *testing.T, sbID string) *shimtest.Shim {
	t.Helper()
	return f.shims.Running(f.ctl.Dir(sbID))
}

// ctrStatus is a container's status as ContainerStatus reports it.
func (f *fake) ctrStatus(t *testing.T, id string) *runtimeapi.ContainerStatus {
	t.Helper()
	r, err := f.ContainerStatus(context.Background(), &runtimeapi.ContainerStatusRequest{ContainerId: id})
	if err != nil {
		t.Fatalf("ContainerStatus(%s): %v", id, err)
	}
	return r.GetStatus()
}

// fakeImages is an image store with pulled images and nothing below
// them: a Linux VM image with a kernel and no disk boots from its
// BaseDir, so no base is committed in the snapshotter.
type fakeImages struct {
	mu      sync.Mutex
	images  map[string]imagestore.VMImage // by name
	removed []string
	// treesReleased are the images whose trees RemoveTree dropped; an
	// image's tree is its BaseDir.
	treesReleased []string
	// inUse is the service's InUse option (newFake sets it).
	inUse func(imageID string) bool
}

var _ imageStore = (*fakeImages)(nil)

func newFakeImages(t testing.TB) *fakeImages {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "vmlinux"), []byte("kernel"), 0o644); err != nil {
		t.Fatal(err)
	}
	img := imagestore.VMImage{
		Image: imagestore.Image{
			Name: guestRef, Kind: vmimage.KindLinux, Size: 1 << 20,
			Manifest: ocispec.Descriptor{MediaType: ocispec.MediaTypeImageManifest, Digest: digest.FromString("guest manifest")},
			Config:   ocispec.Descriptor{MediaType: vmimage.MediaTypeLinuxConfig, Digest: digest.FromString("guest config")},
		},
		Descriptor: &vmimage.Descriptor{
			Kind: vmimage.KindLinux, OS: "linux", Arch: "amd64", Kernel: "vmlinux", KernelCmdline: "console=ttyS0",
			Process: guestProcess,
		},
		Content: digest.FromString("guest layers").String(), Base: "base-guest", BaseDir: dir,
	}
	return &fakeImages{images: map[string]imagestore.VMImage{guestRef: img}}
}

// addOther adds another Linux VM image, under name, which boots a
// different VM than guestRef's and has process as its default.
func (f *fakeImages) addOther(name string, process *vmimage.Process) imagestore.VMImage {
	f.mu.Lock()
	defer f.mu.Unlock()
	img := f.images[guestRef]
	desc := *img.Descriptor
	desc.Process = process
	img.Descriptor = &desc
	img.Image.Name = name
	img.Image.Manifest.Digest = digest.FromString(name + " manifest")
	img.Content = digest.FromString(name + " layers").String()
	f.images[name] = img
	return img
}

// lookup finds an image by name or ID.
func (f *fakeImages) lookup(ref string) (imagestore.VMImage, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for name, img := range f.images {
		if name == ref || img.Image.ID() == ref {
			return img, true
		}
	}
	return imagestore.VMImage{}, false
}

func (f *fakeImages) VMImage(ctx context.Context, ref string) (imagestore.VMImage, error) {
	if img, ok := f.lookup(ref); ok {
		return img, nil
	}
	return imagestore.VMImage{}, fmt.Errorf("image %q is not present; pull it first: %w", ref, errdefs.ErrNotFound)
}

func (f *fakeImages) Resolve(ctx context.Context, ref string) ([]imagestore.Image, error) {
	if img, ok := f.lookup(ref); ok {
		return []imagestore.Image{img.Image}, nil
	}
	return nil, fmt.Errorf("image %q: %w", ref, errdefs.ErrNotFound)
}

func (f *fakeImages) Pull(ctx context.Context, ref string, auth *imagestore.Auth, _ ...imagestore.PullOption) (imagestore.Image, error) {
	if img, ok := f.lookup(ref); ok {
		return img.Image, nil
	}
	return imagestore.Image{}, fmt.Errorf("pulling %q: %w", ref, errdefs.ErrNotFound)
}

// Import and Push are the real store's alone (vmimage/imagestore's
// tests, integration's TestImageImportPush).
func (f *fakeImages) Import(ctx context.Context, src, ref string, _ ...imagestore.PullOption) (imagestore.Image, error) {
	return imagestore.Image{}, fmt.Errorf("fake image store: no import: %w", errdefs.ErrNotImplemented)
}

func (f *fakeImages) Push(ctx context.Context, local, ref string, _ *imagestore.Auth, _ ...imagestore.PullOption) (imagestore.Pushed, error) {
	return imagestore.Pushed{}, fmt.Errorf("fake image store: no push: %w", errdefs.ErrNotImplemented)
}

// Remove removes an image with all its names; as the real store, it
// refuses an image the service's InUse says is used.
func (f *fakeImages) Remove(ctx context.Context, ref string) error {
	img, ok := f.lookup(ref)
	if !ok {
		return fmt.Errorf("image %q: %w", ref, errdefs.ErrNotFound)
	}
	if f.inUse != nil && f.inUse(img.Image.ID()) {
		return fmt.Errorf("image %s is used by a pod sandbox: %w", ref, errdefs.ErrFailedPrecondition)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	for name, i := range f.images {
		if i.Image.ID() == img.Image.ID() {
			delete(f.images, name)
			f.removed = append(f.removed, name)
		}
	}
	return nil
}

func (f *fakeImages) List(ctx context.Context) ([]imagestore.Image, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []imagestore.Image
	for _, img := range f.images {
		out = append(out, img.Image)
	}
	return out, nil
}

// Config is the image's macvz Linux VM config.
func (f *fakeImages) Config(ctx context.Context, img imagestore.Image) ([]byte, error) {
	vi, ok := f.lookup(img.ID())
	if !ok {
		return nil, fmt.Errorf("image %s: %w", img.Name, errdefs.ErrNotFound)
	}
	d := vi.Descriptor
	return json.Marshal(vmimage.LinuxConfig{OS: d.OS, Arch: d.Arch, KernelCmdline: d.KernelCmdline, Process: d.Process})
}

func (f *fakeImages) OCIConfig(ctx context.Context, img imagestore.Image) (ocispec.Image, bool, error) {
	return ocispec.Image{}, false, nil
}

func (f *fakeImages) Base(ctx context.Context, img imagestore.Image) (string, bool) {
	vi, ok := f.lookup(img.ID())
	return vi.Base, ok
}

func (f *fakeImages) Usage(ctx context.Context) (int64, int64, error) { return 0, 0, nil }

func (f *fakeImages) Collect(ctx context.Context) error { return nil }

func (f *fakeImages) DropInterruptedPulls(ctx context.Context) int { return 0 }

// Footprint is the image's Size, logical, and half of it allocated.
func (f *fakeImages) Footprint(ctx context.Context, img imagestore.Image) (imagestore.Footprint, error) {
	return imagestore.Footprint{Logical: img.Size, Allocated: img.Size / 2}, nil
}

func (f *fakeImages) Tree(ctx context.Context, img imagestore.Image) (string, error) {
	vi, ok := f.lookup(img.ID())
	if !ok {
		return "", errdefs.ErrNotFound
	}
	return vi.BaseDir, nil
}

func (f *fakeImages) RemoveTree(ctx context.Context, img imagestore.Image) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.treesReleased = append(f.treesReleased, img.ID())
	return nil
}

func (f *fakeImages) Close() error { return nil }

// launcher is shimtest's launcher whose shims also run the container
// process verbs StopContainer and RemoveContainer use: a signal or a
// kill ends the process at once (the exit the shim then reports), unless
// the test made it ignore SIGTERM.
type launcher struct {
	*shimtest.Launcher
	mu         sync.Mutex
	signals    []*agentapi.SignalProcessRequest
	kills      []*agentapi.KillAllRequest
	ignoreTerm bool
	// stats answers a guest agent's Stats, by its shim's directory.
	stats func(dir string) (*agentapi.StatsResponse, error)
}

func (l *launcher) Spawn(ctx context.Context, o shim.SpawnOptions) (shim.Conn, error) {
	c, err := l.Launcher.Spawn(ctx, o)
	if err != nil {
		return nil, err
	}
	return &procConn{Conn: c, fake: c.(*shimtest.Shim), l: l}, nil
}

func (l *launcher) Connect(ctx context.Context, dir string) (shim.Conn, error) {
	c, err := l.Launcher.Connect(ctx, dir)
	if err != nil {
		return nil, err
	}
	return &procConn{Conn: c, fake: c.(*shimtest.Shim), l: l}, nil
}

// Signals and Kills are what the guest agents were asked so far.
func (l *launcher) Signals() []*agentapi.SignalProcessRequest {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]*agentapi.SignalProcessRequest(nil), l.signals...)
}

func (l *launcher) Kills() []*agentapi.KillAllRequest {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]*agentapi.KillAllRequest(nil), l.kills...)
}

// IgnoreTerm makes processes survive SIGTERM (only SIGKILL ends them).
func (l *launcher) IgnoreTerm() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.ignoreTerm = true
}

// SetStats makes the guest agents answer Stats with fn (by the shim's
// directory, f.ctl.Dir of the sandbox).
func (l *launcher) SetStats(fn func(dir string) (*agentapi.StatsResponse, error)) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.stats = fn
}

// procConn is a fake shim with the process verbs.
type procConn struct {
	shim.Conn
	fake *shimtest.Shim
	l    *launcher
}

func (c *procConn) Agent() agentapi.AgentClient {
	return procAgent{AgentClient: c.Conn.Agent(), c: c}
}

func (c *procConn) Shim() shimapi.ShimService {
	return procShim{ShimService: c.Conn.Shim(), c: c}
}

// exitBy records the exit of a container's process killed by sig.
func (c *procConn) exitBy(cid string, sig syscall.Signal) {
	c.fake.SetExit(cid, &shimapi.ProcessExit{ExitCode: 128 + int32(sig), Signaled: true, Signal: uint32(sig), Reason: "Error"})
}

type procAgent struct {
	agentapi.AgentClient
	c *procConn
}

func (a procAgent) SignalProcess(ctx context.Context, r *agentapi.SignalProcessRequest) (*agentapi.SignalProcessResponse, error) {
	l := a.c.l
	l.mu.Lock()
	l.signals = append(l.signals, r)
	ignore := l.ignoreTerm && r.GetSignal() == uint32(syscall.SIGTERM)
	l.mu.Unlock()
	if !ignore {
		a.c.exitBy(r.GetId().GetContainerId(), syscall.Signal(r.GetSignal()))
	}
	return &agentapi.SignalProcessResponse{}, nil
}

func (a procAgent) KillAll(ctx context.Context, r *agentapi.KillAllRequest) (*agentapi.KillAllResponse, error) {
	a.c.l.mu.Lock()
	a.c.l.kills = append(a.c.l.kills, r)
	a.c.l.mu.Unlock()
	if sig := syscall.Signal(r.GetSignal()); sig != syscall.SIGSTOP && sig != syscall.SIGCONT {
		a.c.exitBy(r.GetContainerId(), sig)
	}
	return &agentapi.KillAllResponse{}, nil
}

// Stats answers with the launcher's stats; Unimplemented without them.
func (a procAgent) Stats(ctx context.Context, r *agentapi.StatsRequest) (*agentapi.StatsResponse, error) {
	a.c.l.mu.Lock()
	fn := a.c.l.stats
	a.c.l.mu.Unlock()
	if fn == nil {
		return nil, status.Error(codes.Unimplemented, "the fake agent has no stats")
	}
	return fn(a.c.fake.Dir)
}

type procShim struct {
	shimapi.ShimService
	c *procConn
}

// WaitProcess returns the process's exit once there is one.
func (s procShim) WaitProcess(ctx context.Context, r *shimapi.WaitProcessRequest) (*shimapi.WaitProcessResponse, error) {
	for {
		st, err := s.ShimService.ProcessStatus(ctx, &shimapi.ProcessStatusRequest{ContainerId: r.GetContainerId()})
		if err == nil && st.GetExit() != nil {
			return &shimapi.WaitProcessResponse{Exit: st.GetExit()}, nil
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// noSandboxLeft fails the test if a sandbox record, a sandbox directory
// or a running shim is left.
func (f *fake) noSandboxLeft(t *testing.T, what string) {
	t.Helper()
	if sbs, err := f.st.Sandboxes(nil); err != nil || len(sbs) != 0 {
		t.Errorf("%s: sandboxes left: %v, %v", what, sbs, err)
	}
	if ents, _ := os.ReadDir(filepath.Join(f.cfg.State, "sandboxes")); len(ents) != 0 {
		t.Errorf("%s: sandbox directories left: %v", what, ents)
	}
	for _, o := range f.shims.Spawned() {
		if f.shims.Running(o.Dir) != nil {
			t.Errorf("%s: a shim still runs in %s", what, o.Dir)
		}
	}
}

package nodevm

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containerd/ttrpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/macvz/macvz/runtime/agentapi"
	"github.com/macvz/macvz/runtime/nodevm/memvol"
)

// fakeRuntime keeps sandboxes and containers in memory and records the
// calls.
type fakeRuntime struct {
	mu      sync.Mutex
	n       int
	pulled  bool
	sbs     map[string]*runtimeapi.PodSandbox
	ctrs    map[string]*runtimeapi.Container
	calls   []string
	runErr  error
	lastPod *runtimeapi.PodSandboxConfig
	lastCtr *runtimeapi.ContainerConfig
	// podCfgs are the configs of the sandboxes RunPodSandbox made, whose
	// status says their network (a pod IP on the pod network).
	podCfgs  map[string]*runtimeapi.PodSandboxConfig
	forwards chan string // PortForward listens asked
}

func newFake() *fakeRuntime {
	return &fakeRuntime{sbs: map[string]*runtimeapi.PodSandbox{}, ctrs: map[string]*runtimeapi.Container{}, forwards: make(chan string, 16)}
}

func (f *fakeRuntime) call(name string, ctx context.Context) {
	if !Internal(ctx) {
		panic(name + " called without the internal context")
	}
	f.calls = append(f.calls, name)
}

func (f *fakeRuntime) RunPodSandbox(ctx context.Context, r *runtimeapi.RunPodSandboxRequest) (*runtimeapi.RunPodSandboxResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.call("RunPodSandbox", ctx)
	if f.runErr != nil {
		return nil, f.runErr
	}
	f.n++
	id := fmt.Sprintf("sb%d", f.n)
	f.lastPod = r.GetConfig()
	if f.podCfgs == nil {
		f.podCfgs = map[string]*runtimeapi.PodSandboxConfig{}
	}
	f.podCfgs[id] = r.GetConfig()
	f.sbs[id] = &runtimeapi.PodSandbox{Id: id, Metadata: r.GetConfig().GetMetadata(), Labels: r.GetConfig().GetLabels(), State: runtimeapi.PodSandboxState_SANDBOX_READY}
	return &runtimeapi.RunPodSandboxResponse{PodSandboxId: id}, nil
}

func (f *fakeRuntime) PodSandboxStatus(ctx context.Context, r *runtimeapi.PodSandboxStatusRequest) (*runtimeapi.PodSandboxStatusResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	sb, ok := f.sbs[r.GetPodSandboxId()]
	if !ok {
		return nil, status.Error(codes.NotFound, "no sandbox")
	}
	st := &runtimeapi.PodSandboxStatus{Id: sb.Id, State: sb.State}
	if cfg := f.podCfgs[sb.Id]; cfg != nil {
		opts := cfg.GetLinux().GetSecurityContext().GetNamespaceOptions()
		st.Linux = &runtimeapi.LinuxPodSandboxStatus{Namespaces: &runtimeapi.Namespace{Options: opts}}
		if opts.GetNetwork() == runtimeapi.NamespaceMode_POD {
			st.Network = &runtimeapi.PodSandboxNetworkStatus{Ip: "10.88.0." + strings.TrimPrefix(sb.Id, "sb")}
		}
	}
	return &runtimeapi.PodSandboxStatusResponse{Status: st}, nil
}

func (f *fakeRuntime) ListPodSandbox(ctx context.Context, r *runtimeapi.ListPodSandboxRequest) (*runtimeapi.ListPodSandboxResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.call("ListPodSandbox", ctx)
	var out []*runtimeapi.PodSandbox
	for _, sb := range f.sbs {
		if sb.Labels[Label] == r.GetFilter().GetLabelSelector()[Label] {
			out = append(out, sb)
		}
	}
	return &runtimeapi.ListPodSandboxResponse{Items: out}, nil
}

func (f *fakeRuntime) StopPodSandbox(ctx context.Context, r *runtimeapi.StopPodSandboxRequest) (*runtimeapi.StopPodSandboxResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.call("StopPodSandbox "+r.GetPodSandboxId(), ctx)
	if sb, ok := f.sbs[r.GetPodSandboxId()]; ok {
		sb.State = runtimeapi.PodSandboxState_SANDBOX_NOTREADY
	}
	return &runtimeapi.StopPodSandboxResponse{}, nil
}

func (f *fakeRuntime) RemovePodSandbox(ctx context.Context, r *runtimeapi.RemovePodSandboxRequest) (*runtimeapi.RemovePodSandboxResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.call("RemovePodSandbox "+r.GetPodSandboxId(), ctx)
	delete(f.sbs, r.GetPodSandboxId())
	for id, c := range f.ctrs {
		if c.PodSandboxId == r.GetPodSandboxId() {
			delete(f.ctrs, id)
		}
	}
	return &runtimeapi.RemovePodSandboxResponse{}, nil
}

func (f *fakeRuntime) CreateContainer(ctx context.Context, r *runtimeapi.CreateContainerRequest) (*runtimeapi.CreateContainerResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.call("CreateContainer", ctx)
	f.n++
	id := fmt.Sprintf("c%d", f.n)
	f.lastCtr = r.GetConfig()
	f.ctrs[id] = &runtimeapi.Container{Id: id, PodSandboxId: r.GetPodSandboxId(), Metadata: r.GetConfig().GetMetadata(), State: runtimeapi.ContainerState_CONTAINER_CREATED}
	return &runtimeapi.CreateContainerResponse{ContainerId: id}, nil
}

func (f *fakeRuntime) StartContainer(ctx context.Context, r *runtimeapi.StartContainerRequest) (*runtimeapi.StartContainerResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.call("StartContainer", ctx)
	f.ctrs[r.GetContainerId()].State = runtimeapi.ContainerState_CONTAINER_RUNNING
	return &runtimeapi.StartContainerResponse{}, nil
}

func (f *fakeRuntime) ListContainers(ctx context.Context, r *runtimeapi.ListContainersRequest) (*runtimeapi.ListContainersResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []*runtimeapi.Container
	for _, c := range f.ctrs {
		if c.PodSandboxId == r.GetFilter().GetPodSandboxId() && c.State == r.GetFilter().GetState().GetState() {
			out = append(out, c)
		}
	}
	return &runtimeapi.ListContainersResponse{Containers: out}, nil
}

func (f *fakeRuntime) RemoveContainer(ctx context.Context, r *runtimeapi.RemoveContainerRequest) (*runtimeapi.RemoveContainerResponse, error) {
	return &runtimeapi.RemoveContainerResponse{}, nil
}

func (f *fakeRuntime) PullImage(ctx context.Context, r *runtimeapi.PullImageRequest) (*runtimeapi.PullImageResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.call("PullImage "+r.GetImage().GetImage(), ctx)
	f.pulled = true
	return &runtimeapi.PullImageResponse{ImageRef: "sha256:node"}, nil
}

func (f *fakeRuntime) ImageStatus(ctx context.Context, r *runtimeapi.ImageStatusRequest) (*runtimeapi.ImageStatusResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if !f.pulled {
		return &runtimeapi.ImageStatusResponse{}, nil
	}
	return &runtimeapi.ImageStatusResponse{Image: &runtimeapi.Image{Id: "sha256:node"}}, nil
}

func (f *fakeRuntime) Agent(ctx context.Context, sandboxID string) (agentapi.AgentClient, error) {
	return &fakeAgent{f: f}, nil
}

// exitKubelet marks the sandbox's kubelet exited.
func (f *fakeRuntime) exitKubelet(sbID string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, c := range f.ctrs {
		if c.PodSandboxId == sbID {
			c.State = runtimeapi.ContainerState_CONTAINER_EXITED
		}
	}
}

func (f *fakeRuntime) ready() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []string
	for id, sb := range f.sbs {
		if sb.State == runtimeapi.PodSandboxState_SANDBOX_READY {
			out = append(out, id)
		}
	}
	slices.Sort(out)
	return out
}

// fakeAgent answers PortForward with a stream that waits for a guest
// client that never comes.
type fakeAgent struct {
	agentapi.AgentClient
	f *fakeRuntime
}

func (a *fakeAgent) PortForward(ctx context.Context) (agentapi.Agent_PortForwardClient, error) {
	return &waitingStream{ctx: ctx, f: a.f}, nil
}

type waitingStream struct {
	ttrpc.ClientStream
	ctx context.Context
	f   *fakeRuntime
}

func (s *waitingStream) Send(fr *agentapi.PortForwardFrame) error {
	if fr.Listen != "" {
		select {
		case s.f.forwards <- fr.Listen:
		default:
		}
	}
	return nil
}

func (s *waitingStream) Recv() (*agentapi.PortForwardFrame, error) {
	<-s.ctx.Done()
	return nil, s.ctx.Err()
}

func (s *waitingStream) CloseSend() error { return nil }

func testConfig() Config {
	return Config{
		Image:       "registry.example/macvz/node:v1.37.2",
		KubeletArgs: []string{"--config=/etc/kubernetes/kubelet.yaml", "--kubeconfig=/etc/kubernetes/kubelet.conf"},
		Shares:      []string{"/var/lib/kubelet", "/var/log/pods"},
		MilliCPU:    2000,
		MemoryBytes: 4 << 30,
		LogDir:      "/var/log/macvz/node",
		CRISocket:   "/run/macvz/macvz.sock",
		StreamAddr:  "127.0.0.1:10010",
	}
}

func fast(t *testing.T) {
	oldPoll, oldBackoff := pollEvery, Backoff
	pollEvery = 10 * time.Millisecond
	Backoff.Min, Backoff.Max = 10*time.Millisecond, 50*time.Millisecond
	t.Cleanup(func() { pollEvery, Backoff = oldPoll, oldBackoff })
}

func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not so after 5s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func startSupervisor(t *testing.T, f *fakeRuntime) *Supervisor {
	t.Helper()
	fast(t)
	s := New(testConfig(), f, nil)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { s.Run(ctx); close(done) }()
	t.Cleanup(func() {
		cancel()
		<-done
	})
	return s
}

func TestSupervisorMakesTheNodeVM(t *testing.T) {
	f := newFake()
	s := startSupervisor(t, f)
	waitUntil(t, "node VM running", func() bool { return s.Status().State == "running" })

	f.mu.Lock()
	pod, ctr, calls := f.lastPod, f.lastCtr, slices.Clone(f.calls)
	f.mu.Unlock()
	want := []string{"ListPodSandbox", "PullImage registry.example/macvz/node:v1.37.2", "RunPodSandbox", "CreateContainer", "StartContainer"}
	if !slices.Equal(calls[:len(want)], want) {
		t.Errorf("calls %v, want %v first", calls, want)
	}
	if !IsNode(pod.GetLabels()) || pod.GetLinux().GetSecurityContext().GetNamespaceOptions().GetNetwork() != runtimeapi.NamespaceMode_NODE {
		t.Errorf("pod config: labels %v, network %v; want the node label and the host's network", pod.GetLabels(), pod.GetLinux().GetSecurityContext().GetNamespaceOptions())
	}
	if r := pod.GetLinux().GetResources(); r.GetCpuQuota()*1000/r.GetCpuPeriod() != 2000 || r.GetMemoryLimitInBytes() != 4<<30 {
		t.Errorf("pod resources %v, want 2 CPUs and 4 GiB", r)
	}
	if !ctr.GetLinux().GetSecurityContext().GetPrivileged() || !pod.GetLinux().GetSecurityContext().GetPrivileged() {
		t.Errorf("kubelet's container is not privileged: %v / %v", ctr.GetLinux(), pod.GetLinux())
	}
	if !strings.Contains(strings.Join(ctr.GetCommand(), " "), "exec /usr/bin/kubelet") || !slices.Contains(ctr.GetArgs(), "--container-runtime-endpoint=unix://"+GuestSocket) ||
		!slices.Contains(ctr.GetArgs(), "--kubeconfig=/etc/kubernetes/kubelet.conf") {
		t.Errorf("kubelet's command %v %v", ctr.GetCommand(), ctr.GetArgs())
	}
	for i, m := range ctr.GetMounts() {
		if m.GetHostPath() != m.GetContainerPath() || m.GetHostPath() != testConfig().Shares[i] {
			t.Errorf("mount %d: %s → %s, want each share at its own path", i, m.GetHostPath(), m.GetContainerPath())
		}
	}
	// The CRI socket, the streaming port and the mount helper's socket
	// are served in the VM; kubelet finds the helper first on its PATH.
	got := map[string]bool{}
	for len(got) < 3 {
		select {
		case l := <-f.forwards:
			got[l] = true
		case <-time.After(5 * time.Second):
			t.Fatalf("guest sockets served: %v, want the CRI socket, the streaming port and memvol's", got)
		}
	}
	if !got["unix:"+GuestSocket] || !got["tcp:127.0.0.1:10010"] || !got["unix:"+memvol.GuestSocket] {
		t.Errorf("guest sockets served: %v", got)
	}
	if env := ctr.GetEnvs(); len(env) != 1 || env[0].GetKey() != "PATH" || !strings.HasPrefix(string(env[0].GetValue()), memvol.HelperDir+":") {
		t.Errorf("kubelet's environment %v: want PATH with %s first", env, memvol.HelperDir)
	}
	if cmd := strings.Join(ctr.GetCommand(), " "); !strings.Contains(cmd, memvol.RestoreName+" restore") {
		t.Errorf("kubelet's command %q does not restore the host's tmpfs volumes first", cmd)
	}
}

func TestSupervisorAdoptsARunningNodeVM(t *testing.T) {
	f := newFake()
	f.pulled = true
	f.sbs["old"] = &runtimeapi.PodSandbox{Id: "old", Labels: map[string]string{Label: "true"}, State: runtimeapi.PodSandboxState_SANDBOX_READY}
	f.ctrs["k"] = &runtimeapi.Container{Id: "k", PodSandboxId: "old", Metadata: &runtimeapi.ContainerMetadata{Name: Container}, State: runtimeapi.ContainerState_CONTAINER_RUNNING}
	s := startSupervisor(t, f)
	waitUntil(t, "node VM running", func() bool { return s.Status().State == "running" })
	if st := s.Status(); st.SandboxID != "old" || st.ContainerID != "k" {
		t.Errorf("status %+v, want the running VM adopted", st)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if slices.Contains(f.calls, "RunPodSandbox") {
		t.Errorf("a running node VM was replaced: calls %v", f.calls)
	}
}

func TestSupervisorRemovesALeftoverAndRestartsOnExit(t *testing.T) {
	f := newFake()
	f.sbs["dead"] = &runtimeapi.PodSandbox{Id: "dead", Labels: map[string]string{Label: "true"}, State: runtimeapi.PodSandboxState_SANDBOX_NOTREADY}
	s := startSupervisor(t, f)
	waitUntil(t, "node VM running", func() bool { return s.Status().State == "running" })
	first := s.Status().SandboxID
	f.mu.Lock()
	if _, ok := f.sbs["dead"]; ok {
		t.Error("the stopped node VM left by an earlier daemon was not removed")
	}
	f.mu.Unlock()

	// kubelet exits: the VM is made again.
	f.exitKubelet(first)
	waitUntil(t, "a new node VM", func() bool { st := s.Status(); return st.State == "running" && st.SandboxID != first })
	if st := s.Status(); st.Restarts != 1 || st.LastError != "kubelet in the node VM exited" {
		t.Errorf("after kubelet exited: %+v", st)
	}
	if r := f.ready(); len(r) != 1 {
		t.Errorf("ready sandboxes %v, want one", r)
	}

	// An asked restart makes it again too.
	second := s.Status().SandboxID
	s.Restart()
	waitUntil(t, "a new node VM after Restart", func() bool { st := s.Status(); return st.State == "running" && st.SandboxID != second })
	if r := f.ready(); len(r) != 1 {
		t.Errorf("ready sandboxes %v, want one", r)
	}
}

func TestSupervisorBacksOff(t *testing.T) {
	f := newFake()
	f.runErr = status.Error(codes.ResourceExhausted, "no VM slot")
	s := startSupervisor(t, f)
	waitUntil(t, "two failed attempts", func() bool { return s.Status().Restarts >= 2 })
	st := s.Status()
	if st.State == "running" || !strings.Contains(st.LastError, "no VM slot") {
		t.Errorf("status %+v, want the failure said", st)
	}
	f.mu.Lock()
	f.runErr = nil
	f.mu.Unlock()
	waitUntil(t, "running once RunPodSandbox works", func() bool { return s.Status().State == "running" })
}

func TestSupervisorStop(t *testing.T) {
	f := newFake()
	s := startSupervisor(t, f)
	waitUntil(t, "node VM running", func() bool { return s.Status().State == "running" })
	s.Stop()
	waitUntil(t, "node VM stopped", func() bool { return s.Status().State == "stopped" && len(f.ready()) == 0 })
	f.mu.Lock()
	left := len(f.sbs)
	f.mu.Unlock()
	if left != 0 {
		t.Errorf("%d sandboxes left after Stop", left)
	}
	time.Sleep(50 * time.Millisecond)
	if st := s.Status(); st.State != "stopped" {
		t.Errorf("a stopped node VM came back: %+v", st)
	}
	s.Restart()
	waitUntil(t, "node VM running after Restart", func() bool { return s.Status().State == "running" && len(f.ready()) == 1 })
}

func TestSharesAnnotation(t *testing.T) {
	paths := []string{"/var/lib/kubelet/pods", "/var/log/pods"}
	if got, err := DecodeShares(EncodeShares(paths)); err != nil || !slices.Equal(got, paths) {
		t.Errorf("round trip: %q %v", got, err)
	}
	if got, err := DecodeShares(""); err != nil || got != nil {
		t.Errorf("empty: %q %v", got, err)
	}
	for _, bad := range []string{`["relative"]`, `["/a/../b"]`, `{"a":1}`, `["/a/"]`} {
		if _, err := DecodeShares(bad); err == nil {
			t.Errorf("%s: no error", bad)
		}
	}
	cfg := New(testConfig(), newFake(), nil).podConfig()
	if got, _ := DecodeShares(cfg.GetAnnotations()[SharesAnnotation]); !slices.Equal(got, testConfig().Shares) {
		t.Errorf("the node VM's sandbox names shares %q, want %q", got, testConfig().Shares)
	}
}

package nodevm

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/containerd/ttrpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/macvz/macvz/runtime/agentapi"
)

// dialRuntime is fakeRuntime whose agent connects every dial at once and
// records what it was asked to dial.
type dialRuntime struct {
	*fakeRuntime
	mu     sync.Mutex
	dialed []string
}

func (r *dialRuntime) Agent(ctx context.Context, sandboxID string) (agentapi.AgentClient, error) {
	if !Internal(ctx) {
		panic("Agent called without the internal context")
	}
	return &dialAgent{fakeAgent: fakeAgent{f: r.fakeRuntime}, r: r}, nil
}

type dialAgent struct {
	fakeAgent
	r *dialRuntime
}

func (a *dialAgent) PortForward(ctx context.Context) (agentapi.Agent_PortForwardClient, error) {
	return &dialStream{waitingStream: waitingStream{ctx: ctx, f: a.f}, r: a.r, connected: make(chan struct{}, 1)}, nil
}

type dialStream struct {
	waitingStream
	r         *dialRuntime
	connected chan struct{}
}

func (s *dialStream) Send(fr *agentapi.PortForwardFrame) error {
	if fr.Dial != "" {
		s.r.mu.Lock()
		s.r.dialed = append(s.r.dialed, fr.Dial)
		s.r.mu.Unlock()
		s.connected <- struct{}{}
		return nil
	}
	return s.waitingStream.Send(fr)
}

func (s *dialStream) Recv() (*agentapi.PortForwardFrame, error) {
	select {
	case <-s.connected:
		return &agentapi.PortForwardFrame{}, nil
	case <-s.ctx.Done():
		return nil, s.ctx.Err()
	}
}

var _ ttrpc.ClientStream = (*dialStream)(nil)

// TestDevicePlugins: each device plugin's host socket is served in
// kubelet's device-plugin directory in the VM under its own name, and
// DialKubelet reaches kubelet's sockets through the running node VM's
// agent (Unavailable while none runs).
func TestDevicePlugins(t *testing.T) {
	fast(t)
	r := &dialRuntime{fakeRuntime: newFake()}
	cfg := testConfig()
	cfg.DevicePlugins = []string{"/var/lib/macvz/node-device-plugins/macvz-linux-vm.sock"}
	s := New(cfg, r, nil)
	if _, err := s.DialKubelet(context.Background(), agentapi.KubeletRegistrationSocket); status.Code(err) != codes.Unavailable {
		t.Errorf("DialKubelet with no node VM: %v, want Unavailable", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { s.Run(ctx); close(done) }()
	defer func() { cancel(); <-done }()
	waitUntil(t, "node VM running", func() bool { return s.Status().State == "running" })

	want := "unix:/var/lib/kubelet/device-plugins/macvz-linux-vm.sock"
	deadline := time.After(5 * time.Second)
	for found := false; !found; {
		select {
		case l := <-r.forwards:
			found = l == want
		case <-deadline:
			t.Fatalf("the plugin's socket %s is not served in the VM", want)
		}
	}

	dctx, dcancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer dcancel()
	c, err := s.DialKubelet(dctx, agentapi.KubeletRegistrationSocket)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if got := c.RemoteAddr().String(); got != "node-vm:"+agentapi.KubeletRegistrationSocket {
		t.Errorf("remote address %q", got)
	}
	if err := c.SetDeadline(time.Now()); err == nil {
		t.Error("SetDeadline says it works; the tunnel has no deadlines")
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.dialed) != 1 || r.dialed[0] != "unix:"+agentapi.KubeletRegistrationSocket {
		t.Errorf("the agent was asked to dial %q", r.dialed)
	}
}

package deviceplugin

import (
	"context"
	"io"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	pluginapi "k8s.io/kubelet/pkg/apis/deviceplugin/v1beta1"
	podresourcesapi "k8s.io/kubelet/pkg/apis/podresources/v1"
)

// fakeSlots is Slots with holders the test changes.
type fakeSlots struct {
	mu      sync.Mutex
	limit   map[string]int
	holders map[string][]Holder
}

func (f *fakeSlots) VMSlots(os string) (int, []Holder, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.limit[os], append([]Holder(nil), f.holders[os]...), nil
}

func (f *fakeSlots) set(os string, hs ...Holder) {
	f.mu.Lock()
	f.holders[os] = hs
	f.mu.Unlock()
}

// fakeKubelet is kubelet's registration service on <dir>/kubelet.sock:
// it records each registration and, like kubelet, connects to the
// plugin's endpoint and follows its ListAndWatch.
type fakeKubelet struct {
	dir    string
	srv    *grpc.Server
	regs   chan *pluginapi.RegisterRequest
	lists  chan []*pluginapi.Device
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
	mu     sync.Mutex
	conns  []*grpc.ClientConn
	pluginapi.UnimplementedRegistrationServer
}

func startKubelet(t *testing.T, dir string) *fakeKubelet {
	t.Helper()
	ln, err := net.Listen("unix", filepath.Join(dir, "kubelet.sock"))
	if err != nil {
		t.Fatal(err)
	}
	k := &fakeKubelet{dir: dir, srv: grpc.NewServer(), regs: make(chan *pluginapi.RegisterRequest, 10), lists: make(chan []*pluginapi.Device, 100)}
	k.ctx, k.cancel = context.WithCancel(context.Background())
	pluginapi.RegisterRegistrationServer(k.srv, k)
	k.wg.Go(func() { _ = k.srv.Serve(ln) })
	return k
}

func (k *fakeKubelet) Register(_ context.Context, r *pluginapi.RegisterRequest) (*pluginapi.Empty, error) {
	k.regs <- r
	conn, err := grpc.NewClient("unix://"+filepath.Join(k.dir, r.Endpoint), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, err
	}
	k.mu.Lock()
	k.conns = append(k.conns, conn)
	k.mu.Unlock()
	stream, err := pluginapi.NewDevicePluginClient(conn).ListAndWatch(k.ctx, &pluginapi.Empty{})
	if err != nil {
		return nil, err
	}
	k.wg.Go(func() {
		for {
			resp, err := stream.Recv()
			if err != nil {
				return
			}
			select {
			case k.lists <- resp.Devices:
			case <-k.ctx.Done():
				return
			}
		}
	})
	return &pluginapi.Empty{}, nil
}

// stop ends the fake and removes every file in its directory, as a
// starting kubelet does.
func (k *fakeKubelet) stop() {
	k.cancel()
	k.srv.Stop()
	k.mu.Lock()
	for _, c := range k.conns {
		c.Close()
	}
	k.mu.Unlock()
	k.wg.Wait()
	ents, _ := os.ReadDir(k.dir)
	for _, e := range ents {
		os.Remove(filepath.Join(k.dir, e.Name()))
	}
}

func (k *fakeKubelet) registration(t *testing.T) *pluginapi.RegisterRequest {
	t.Helper()
	select {
	case r := <-k.regs:
		return r
	case <-time.After(10 * time.Second):
		t.Fatal("no registration")
		return nil
	}
}

// waitDevices reads device lists until one reads want ("ID=Health,...").
func (k *fakeKubelet) waitDevices(t *testing.T, want string) {
	t.Helper()
	deadline := time.After(10 * time.Second)
	last := "(none)"
	for {
		select {
		case devs := <-k.lists:
			if last = render(devs); last == want {
				return
			}
		case <-deadline:
			t.Fatalf("devices: last list %s, want %s", last, want)
		}
	}
}

func render(devs []*pluginapi.Device) string {
	var out []string
	for _, d := range devs {
		out = append(out, d.ID+"="+d.Health)
	}
	return strings.Join(out, ",")
}

// fakePodResources is kubelet's pod-resources API.
type fakePodResources struct {
	podresourcesapi.UnimplementedPodResourcesListerServer
	mu   sync.Mutex
	pods []*podresourcesapi.PodResources
}

func (f *fakePodResources) List(context.Context, *podresourcesapi.ListPodResourcesRequest) (*podresourcesapi.ListPodResourcesResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return &podresourcesapi.ListPodResourcesResponse{PodResources: f.pods}, nil
}

// allocate records that kubelet gave pod ns/name devices ids of resource.
func (f *fakePodResources) allocate(ns, name, resource string, ids ...string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.pods = append(f.pods, &podresourcesapi.PodResources{Namespace: ns, Name: name, Containers: []*podresourcesapi.ContainerResources{{
		Name: "c", Devices: []*podresourcesapi.ContainerDevices{{ResourceName: resource, DeviceIds: ids}},
	}}})
}

func startPodResources(t *testing.T, sock string) *fakePodResources {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(sock), 0o755); err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	f := &fakePodResources{}
	srv := grpc.NewServer()
	podresourcesapi.RegisterPodResourcesListerServer(srv, f)
	var wg sync.WaitGroup
	wg.Go(func() { _ = srv.Serve(ln) })
	t.Cleanup(func() { srv.Stop(); wg.Wait() })
	return f
}

// tempRoot is a short kubelet root (unix socket paths are short) with
// its device-plugins directory; at the test's end it checks that no
// goroutine was left.
func tempRoot(t *testing.T) (root, dir string) {
	t.Helper()
	// Runs last, after the fakes' cleanups.
	t.Cleanup(func() { checkNoLeaks(t) })
	root, err := os.MkdirTemp("", "dp")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(root) })
	dir = filepath.Join(root, "device-plugins")
	if err := os.Mkdir(dir, 0o750); err != nil {
		t.Fatal(err)
	}
	return root, dir
}

// checkNoLeaks fails if a goroutine of gRPC or of this package (other
// than the test's) is still there a while after everything stopped.
func checkNoLeaks(t *testing.T) {
	t.Helper()
	var left []string
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		buf := make([]byte, 1<<20)
		buf = buf[:runtime.Stack(buf, true)]
		left = left[:0]
		for _, g := range strings.Split(string(buf), "\n\n") {
			if strings.Contains(g, "google.golang.org/grpc") || strings.Contains(g, "cri/deviceplugin.(") {
				left = append(left, g)
			}
		}
		if len(left) == 0 {
			return
		}
	}
	t.Fatalf("%d goroutines left after Stop:\n%s", len(left), strings.Join(left, "\n\n"))
}

func TestRegisterAndListAndWatch(t *testing.T) {
	root, dir := tempRoot(t)
	podres := startPodResources(t, filepath.Join(root, "pod-resources", "kubelet.sock"))
	k := startKubelet(t, dir)
	slots := &fakeSlots{limit: map[string]int{"darwin": 2}, holders: map[string][]Holder{}}
	m, err := Start(Options{
		Dir:       dir,
		Resources: []Resource{{MacOSResource, "darwin"}, {LinuxResource, "linux"}},
		Slots:     slots,
		Interval:  20 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	if got := m.Resources(); len(got) != 1 || got[0] != MacOSResource {
		t.Fatalf("resources %v: linux has no bound and must not be registered", got)
	}

	r := k.registration(t)
	if r.Version != "v1beta1" || r.Endpoint != "macvz-macos-vm.sock" || r.ResourceName != "macvz.io/macos-vm" {
		t.Fatalf("registration %+v", r)
	}
	fi, err := os.Stat(filepath.Join(dir, r.Endpoint))
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("plugin socket mode %v, want 0600", fi.Mode().Perm())
	}
	k.waitDevices(t, "macos-vm-1=Healthy,macos-vm-2=Healthy")

	// A crictl pod holds a slot kubelet knows nothing of.
	slots.set("darwin", Holder{SandboxID: "s1", Namespace: "default", Name: "crictl"})
	k.waitDevices(t, "macos-vm-1=Healthy,macos-vm-2=Unhealthy")

	// kubelet gives pod a device 2 and its VM boots: 2 stays healthy, the
	// crictl pod's slot is counted on device 1.
	podres.allocate("default", "a", MacOSResource, "macos-vm-2")
	slots.set("darwin", Holder{SandboxID: "s1", Namespace: "default", Name: "crictl"}, Holder{SandboxID: "s2", Namespace: "default", Name: "a"})
	k.waitDevices(t, "macos-vm-1=Unhealthy,macos-vm-2=Healthy")

	// The crictl pod stops.
	slots.set("darwin", Holder{SandboxID: "s2", Namespace: "default", Name: "a"})
	k.waitDevices(t, "macos-vm-1=Healthy,macos-vm-2=Healthy")

	// A pod kubelet ran without the resource holds a slot too.
	slots.set("darwin", Holder{SandboxID: "s2", Namespace: "default", Name: "a"}, Holder{SandboxID: "s3", Namespace: "default", Name: "b"})
	k.waitDevices(t, "macos-vm-1=Unhealthy,macos-vm-2=Healthy")

	// Allocate answers one empty response per container.
	conn, err := grpc.NewClient("unix://"+filepath.Join(dir, r.Endpoint), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	c := pluginapi.NewDevicePluginClient(conn)
	resp, err := c.Allocate(context.Background(), &pluginapi.AllocateRequest{ContainerRequests: []*pluginapi.ContainerAllocateRequest{{DevicesIds: []string{"macos-vm-2"}}}})
	if err != nil || len(resp.ContainerResponses) != 1 {
		t.Fatalf("Allocate: %v, %v", resp, err)
	}
	if _, err := c.Allocate(context.Background(), &pluginapi.AllocateRequest{ContainerRequests: []*pluginapi.ContainerAllocateRequest{{DevicesIds: []string{"gpu-0"}}}}); err == nil {
		t.Error("Allocate of an unknown device succeeded")
	}
	if o, err := c.GetDevicePluginOptions(context.Background(), &pluginapi.Empty{}); err != nil || o.PreStartRequired || o.GetPreferredAllocationAvailable {
		t.Errorf("GetDevicePluginOptions: %v, %v", o, err)
	}
	conn.Close()

	m.Stop()
	if _, err := os.Lstat(filepath.Join(dir, r.Endpoint)); !os.IsNotExist(err) {
		t.Errorf("plugin socket left after Stop: %v", err)
	}
	k.stop()
}

// Without kubelet's pod-resources API every holder is taken for
// kubelet's: nothing turns unhealthy.
func TestNoPodResources(t *testing.T) {
	_, dir := tempRoot(t)
	k := startKubelet(t, dir)
	slots := &fakeSlots{limit: map[string]int{"linux": 3}, holders: map[string][]Holder{"linux": {{SandboxID: "s1", Namespace: "x", Name: "y"}}}}
	m, err := Start(Options{Dir: dir, Resources: []Resource{{LinuxResource, "linux"}}, Slots: slots, Interval: 20 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	if r := k.registration(t); r.ResourceName != LinuxResource || r.Endpoint != "macvz-linux-vm.sock" {
		t.Fatalf("registration %+v", r)
	}
	k.waitDevices(t, "linux-vm-1=Healthy,linux-vm-2=Healthy,linux-vm-3=Healthy")
	m.Stop()
	k.stop()
}

// A kubelet that starts after the daemon, and one that restarts (a new
// kubelet.sock, the plugin sockets deleted), gets the plugin
// registered again.
func TestReRegisters(t *testing.T) {
	root, dir := tempRoot(t)
	startPodResources(t, filepath.Join(root, "pod-resources", "kubelet.sock"))
	slots := &fakeSlots{limit: map[string]int{"darwin": 2}, holders: map[string][]Holder{}}
	m, err := Start(Options{Dir: dir, Resources: []Resource{{MacOSResource, "darwin"}}, Slots: slots, Interval: 20 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(100 * time.Millisecond) // a few rounds without kubelet

	k := startKubelet(t, dir)
	k.registration(t)
	k.waitDevices(t, "macos-vm-1=Healthy,macos-vm-2=Healthy")

	// kubelet restarts: its socket and ours are gone, then it is back.
	k.stop()
	k = startKubelet(t, dir)
	if r := k.registration(t); r.ResourceName != MacOSResource {
		t.Fatalf("re-registration %+v", r)
	}
	slots.set("darwin", Holder{SandboxID: "s1", Namespace: "default", Name: "crictl"})
	k.waitDevices(t, "macos-vm-1=Healthy,macos-vm-2=Unhealthy")

	// A new kubelet.sock with our socket left in place (kubelet did not
	// clean up) is registered with too.
	k.stop2()
	k = startKubelet(t, dir)
	k.registration(t)
	k.waitDevices(t, "macos-vm-1=Healthy,macos-vm-2=Unhealthy")

	m.Stop()
	k.stop()
	select {
	case r := <-k.regs:
		t.Errorf("registration after Stop: %+v", r)
	default:
	}
}

// stop2 stops the fake and removes only kubelet.sock.
func (k *fakeKubelet) stop2() {
	k.cancel()
	k.srv.Stop()
	k.mu.Lock()
	for _, c := range k.conns {
		c.Close()
	}
	k.mu.Unlock()
	k.wg.Wait()
	os.Remove(filepath.Join(k.dir, "kubelet.sock"))
}

func TestDevices(t *testing.T) {
	h := func(name string) Holder { return Holder{SandboxID: name, Namespace: "ns", Name: name} }
	for name, tc := range map[string]struct {
		limit   int
		holders []Holder
		alloc   *allocation
		want    string
	}{
		"free":                {2, nil, &allocation{}, "macos-vm-1=Healthy,macos-vm-2=Healthy"},
		"unknown holder":      {2, []Holder{h("x")}, &allocation{}, "macos-vm-1=Healthy,macos-vm-2=Unhealthy"},
		"all unknown":         {2, []Holder{h("x"), h("y")}, &allocation{}, "macos-vm-1=Unhealthy,macos-vm-2=Unhealthy"},
		"allocations unknown": {2, []Holder{h("x"), h("y")}, nil, "macos-vm-1=Healthy,macos-vm-2=Healthy"},
		"allocated kept healthy": {3, []Holder{h("a"), h("x")},
			&allocation{pods: map[string]bool{"ns/a": true}, ids: map[string]bool{"macos-vm-3": true}},
			"macos-vm-1=Healthy,macos-vm-2=Unhealthy,macos-vm-3=Healthy"},
		// kubelet allocated both devices (one pod not booted yet) and a
		// crictl pod holds a slot too: nothing allocated turns unhealthy.
		"overcommitted": {2, []Holder{h("a"), h("x")},
			&allocation{pods: map[string]bool{"ns/a": true, "ns/b": true}, ids: map[string]bool{"macos-vm-1": true, "macos-vm-2": true}},
			"macos-vm-1=Healthy,macos-vm-2=Healthy"},
	} {
		devs, _ := devices(MacOSResource, tc.limit, tc.holders, tc.alloc)
		if got := render(devs); got != tc.want {
			t.Errorf("%s: %s, want %s", name, got, tc.want)
		}
	}
}

// relay stands for the node VM's forward of a plugin socket: clients of
// guest are joined to host. stop removes guest, as kubelet does.
func relay(t *testing.T, guest, host string) (stop func()) {
	t.Helper()
	ln, err := net.Listen("unix", guest)
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	var conns []net.Conn
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			h, err := net.Dial("unix", host)
			if err != nil {
				c.Close()
				continue
			}
			mu.Lock()
			conns = append(conns, c, h)
			mu.Unlock()
			wg.Go(func() { io.Copy(h, c); h.Close() })
			wg.Go(func() { io.Copy(c, h); c.Close() })
		}
	})
	return func() {
		ln.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	}
}

// TestRemoteKubelet: kubelet in the node VM. Its registration and
// pod-resources sockets are reached only through Dial, the plugin's
// socket is made in SocketDir and kubelet reaches it through the VM's
// forward; a new kubelet (a new node VM: the forward and kubelet's
// ListAndWatch end) gets the plugin registered again, and a kubelet that
// watches is not registered with again.
func TestRemoteKubelet(t *testing.T) {
	defer func(d time.Duration) { watchGrace = d }(watchGrace)
	watchGrace = 200 * time.Millisecond
	root, dir := tempRoot(t)
	hostDir := filepath.Join(root, "host")
	if err := os.Mkdir(hostDir, 0o700); err != nil {
		t.Fatal(err)
	}
	podres := startPodResources(t, filepath.Join(root, "pod-resources", "kubelet.sock"))
	var mu sync.Mutex
	dialled := map[string]int{}
	slots := &fakeSlots{limit: map[string]int{"linux": 2}, holders: map[string][]Holder{}}
	m, err := Start(Options{
		Dir:       dir,
		SocketDir: hostDir,
		Dial: func(ctx context.Context, path string) (net.Conn, error) {
			mu.Lock()
			dialled[path]++
			mu.Unlock()
			var d net.Dialer
			return d.DialContext(ctx, "unix", path)
		},
		Resources: []Resource{{LinuxResource, "linux"}},
		Slots:     slots,
		Interval:  20 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(100 * time.Millisecond) // a few rounds without kubelet
	hostSock := filepath.Join(hostDir, SocketName(LinuxResource))
	if fi, err := os.Lstat(hostSock); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("the plugin's socket in SocketDir: %v %v", fi, err)
	}
	if _, err := os.Lstat(filepath.Join(dir, SocketName(LinuxResource))); !os.IsNotExist(err) {
		t.Fatalf("a plugin socket made in kubelet's directory: %v", err)
	}

	stopRelay := relay(t, filepath.Join(dir, SocketName(LinuxResource)), hostSock)
	k := startKubelet(t, dir)
	if r := k.registration(t); r.Endpoint != "macvz-linux-vm.sock" || r.ResourceName != LinuxResource {
		t.Fatalf("registration %+v", r)
	}
	k.waitDevices(t, "linux-vm-1=Healthy,linux-vm-2=Healthy")
	// kubelet's pod-resources, through Dial too.
	podres.allocate("default", "a", LinuxResource, "linux-vm-1")
	slots.set("linux", Holder{SandboxID: "s1", Namespace: "default", Name: "a"}, Holder{SandboxID: "s2", Namespace: "default", Name: "crictl"})
	k.waitDevices(t, "linux-vm-1=Healthy,linux-vm-2=Unhealthy")
	// kubelet watches: no registration again.
	time.Sleep(5 * watchGrace)
	select {
	case r := <-k.regs:
		t.Errorf("registered again while kubelet watches: %+v", r)
	default:
	}

	// A new node VM: kubelet and the forward go, and come back.
	stopRelay()
	k.stop()
	time.Sleep(100 * time.Millisecond)
	stopRelay = relay(t, filepath.Join(dir, SocketName(LinuxResource)), hostSock)
	k = startKubelet(t, dir)
	if r := k.registration(t); r.ResourceName != LinuxResource {
		t.Fatalf("re-registration %+v", r)
	}
	k.waitDevices(t, "linux-vm-1=Healthy,linux-vm-2=Unhealthy")

	m.Stop()
	stopRelay()
	k.stop()
	if _, err := os.Lstat(hostSock); !os.IsNotExist(err) {
		t.Errorf("plugin socket left after Stop: %v", err)
	}
	mu.Lock()
	defer mu.Unlock()
	if dialled[filepath.Join(dir, "kubelet.sock")] == 0 || dialled[filepath.Join(root, "pod-resources", "kubelet.sock")] == 0 {
		t.Errorf("kubelet's sockets dialled: %v, want its registration and pod-resources sockets", dialled)
	}
}

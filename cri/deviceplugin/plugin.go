// Package deviceplugin shows kubelet macvz's VM slots as extended
// resources through kubelet's device-plugin API (v1beta1), so the
// scheduler stops sending VM pods to a node whose slots are full.
//
// Each resource (macvz.io/macos-vm, macvz.io/linux-vm) is one plugin: a
// gRPC server on a socket in kubelet's device-plugin directory,
// registered with kubelet.sock there, that lists one device per VM slot
// of its guest OS. A device is Healthy while its slot is free or held by
// a pod kubelet allocated a device of the resource to; every slot held
// by a VM kubelet did not allocate (a crictl pod, a pod that did not ask
// for the resource) makes one device Unhealthy. kubelet's allocatable
// for the resource is the Healthy devices, so allocatable minus the
// devices kubelet's pods requested is the free slots. Which pods kubelet
// allocated devices to comes from its pod-resources API
// (<kubelet root>/pod-resources/kubelet.sock); when that does not
// answer, every holder is taken for kubelet's.
//
// Like the CRI services it faces kubelet; it knows the runtime only
// through Slots, which cri implements over the sandbox controller.
//
// kubelet may run where its directory is not this host's (the node VM):
// Options.Dial then reaches its sockets, the plugins' sockets are made in
// Options.SocketDir, and whoever set Dial serves each of them under its
// SocketName in kubelet's directory there.
package deviceplugin

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path"
	"path/filepath"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/credentials/insecure"
	pluginapi "k8s.io/kubelet/pkg/apis/deviceplugin/v1beta1"
	podresourcesapi "k8s.io/kubelet/pkg/apis/podresources/v1"
)

// The extended resources, one device per VM slot.
const (
	MacOSResource = "macvz.io/macos-vm"
	LinuxResource = "macvz.io/linux-vm"
)

// DefaultDir is kubelet's device-plugin directory.
const DefaultDir = pluginapi.DevicePluginPath

// Slots is what the plugins need of the runtime: the bound on the VMs
// of a guest OS ("darwin", "linux"; 0 = none) and the sandboxes whose VM
// of it runs or boots. It is called without any lock of this package
// held.
type Slots interface {
	VMSlots(os string) (limit int, holders []Holder, err error)
}

// Resource is one extended resource and the guest OS whose slots it
// counts.
type Resource struct {
	Name string // "macvz.io/macos-vm"
	OS   string // "darwin"
}

// Options configure a Manager.
type Options struct {
	// Dir is kubelet's device-plugin directory: kubelet.sock is there,
	// and the plugins' sockets are made there (unless SocketDir says
	// otherwise).
	Dir string
	// SocketDir is where the plugins' sockets are made; "" = Dir. With
	// Dial set, it is a directory of this host's, and each socket is
	// served in kubelet's Dir, under its SocketName, by whoever set Dial.
	SocketDir string
	// Dial, when set, reaches kubelet's sockets (Dir's kubelet.sock,
	// PodResourcesSocket), which are then not files of this host's:
	// kubelet runs in the node VM. A new kubelet cannot be seen as a new
	// kubelet.sock there, so a plugin is registered again once kubelet
	// has no ListAndWatch stream open to it: kubelet opens one when the
	// plugin registers and keeps it while it runs.
	Dial func(ctx context.Context, path string) (net.Conn, error)
	// Log is where the manager logs; nil = slog.Default().
	Log *slog.Logger
	// PodResourcesSocket is kubelet's pod-resources API; "" =
	// <Dir>/../pod-resources/kubelet.sock.
	PodResourcesSocket string
	// Resources are the plugins; one whose OS has no bound (limit 0) is
	// not registered.
	Resources []Resource
	Slots     Slots
	// Interval is how often the slots and kubelet's socket are looked
	// at; 0 = a second.
	Interval time.Duration
}

// Manager runs the plugins: it polls the slots and kubelet's socket,
// serves and (re-)registers each plugin, and updates their device lists.
type Manager struct {
	o                Options
	kubeletSock      string
	plugins          []*plugin
	podres           *grpc.ClientConn
	stop, done       chan struct{}
	wg               sync.WaitGroup // the plugins' gRPC servers
	quietAbsent      bool           // "kubelet is not there" was logged
	quietPodRes      bool           // "pod-resources does not answer" was logged
	quietSlots       bool           // a VMSlots error was logged
	stopOnce         sync.Once
	registrationWait time.Duration
	// watchGrace is how long after a registration kubelet may take to
	// open its ListAndWatch stream (Dial only).
	watchGrace time.Duration
}

// watchGrace is Manager.watchGrace (tests shorten it).
var watchGrace = 15 * time.Second

// SocketName is the name of resource's plugin socket, in SocketDir and in
// kubelet's directory: "macvz-linux-vm.sock" for macvz.io/linux-vm.
func SocketName(resource string) string {
	return "macvz-" + path.Base(resource) + ".sock"
}

// Start checks which resources have a bound and starts the manager's
// loop; nothing is registered if none has. Stop ends it.
func Start(o Options) (*Manager, error) {
	if o.Interval <= 0 {
		o.Interval = time.Second
	}
	if o.PodResourcesSocket == "" {
		o.PodResourcesSocket = filepath.Join(filepath.Dir(filepath.Clean(o.Dir)), "pod-resources", "kubelet.sock")
	}
	if o.SocketDir == "" {
		o.SocketDir = o.Dir
	}
	if o.Log == nil {
		o.Log = slog.Default()
	}
	m := &Manager{
		o:                o,
		kubeletSock:      filepath.Join(o.Dir, filepath.Base(pluginapi.KubeletSocket)),
		stop:             make(chan struct{}),
		done:             make(chan struct{}),
		registrationWait: 5 * time.Second,
		watchGrace:       watchGrace,
	}
	for _, r := range o.Resources {
		limit, _, err := o.Slots.VMSlots(r.OS)
		if err != nil {
			return nil, fmt.Errorf("device plugin %s: %w", r.Name, err)
		}
		if limit == 0 {
			continue
		}
		m.plugins = append(m.plugins, &plugin{
			res:     r,
			n:       limit,
			sock:    filepath.Join(o.SocketDir, SocketName(r.Name)),
			changed: make(chan struct{}),
			quit:    make(chan struct{}),
			log:     o.Log,
		})
	}
	if len(m.plugins) == 0 {
		close(m.done)
		return m, nil
	}
	conn, err := m.kubeletConn(o.PodResourcesSocket)
	if err != nil {
		return nil, fmt.Errorf("pod-resources client: %w", err)
	}
	m.podres = conn
	go m.run()
	return m, nil
}

// Stop ends the loop and the plugins' servers and removes their sockets;
// kubelet then marks the resources' devices unhealthy.
func (m *Manager) Stop() {
	m.stopOnce.Do(func() {
		close(m.stop)
		<-m.done
		for _, p := range m.plugins {
			close(p.quit)
			p.shutdown()
		}
		m.wg.Wait()
		if m.podres != nil {
			m.podres.Close()
		}
	})
}

// kubeletConn is a client of kubelet's socket at path.
func (m *Manager) kubeletConn(path string) (*grpc.ClientConn, error) {
	if m.o.Dial == nil {
		return grpc.NewClient("unix://"+path, grpc.WithTransportCredentials(insecure.NewCredentials()))
	}
	// A node VM that is made again takes seconds, not gRPC's default
	// two minutes of back-off.
	bo := backoff.DefaultConfig
	bo.MaxDelay = 5 * time.Second
	return grpc.NewClient("passthrough:///"+path,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithConnectParams(grpc.ConnectParams{Backoff: bo, MinConnectTimeout: 10 * time.Second}),
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return m.o.Dial(ctx, path) }))
}

// Resources are the names of the resources the manager registers.
func (m *Manager) Resources() []string {
	var out []string
	for _, p := range m.plugins {
		out = append(out, p.res.Name)
	}
	return out
}

func (m *Manager) run() {
	defer close(m.done)
	t := time.NewTicker(m.o.Interval)
	defer t.Stop()
	for {
		m.refresh()
		m.register()
		select {
		case <-m.stop:
			return
		case <-t.C:
		}
	}
}

// refresh reads the slots (and, when a slot is held, kubelet's
// allocations) and publishes each plugin's devices.
func (m *Manager) refresh() {
	type view struct {
		limit   int
		holders []Holder
		err     error
	}
	views := make([]view, len(m.plugins))
	held := false
	for i, p := range m.plugins {
		v := &views[i]
		v.limit, v.holders, v.err = m.o.Slots.VMSlots(p.res.OS)
		held = held || len(v.holders) > 0
	}
	var allocs map[string]*allocation
	if held {
		var err error
		if allocs, err = m.allocations(); err != nil {
			if !m.quietPodRes {
				m.o.Log.Info("device plugin: kubelet's pod-resources API does not answer; every VM slot holder is taken for a pod kubelet allocated a slot to",
					"socket", m.o.PodResourcesSocket, "err", err)
				m.quietPodRes = true
			}
			allocs = nil
		} else {
			m.quietPodRes = false
		}
	}
	slotsOK := true
	for i, p := range m.plugins {
		v := views[i]
		if v.err != nil {
			slotsOK = false
			if !m.quietSlots {
				m.o.Log.Warn("device plugin: VM slots unreadable; their devices are unhealthy", "resource", p.res.Name, "err", v.err)
				m.quietSlots = true
			}
			var devs []*pluginapi.Device
			for n := 1; n <= p.n; n++ {
				devs = append(devs, &pluginapi.Device{ID: deviceID(p.res.Name, n), Health: pluginapi.Unhealthy})
			}
			p.publish(devs, nil)
			continue
		}
		var a *allocation
		if allocs != nil {
			a = allocs[p.res.Name]
			if a == nil {
				a = &allocation{}
			}
		}
		p.publish(devices(p.res.Name, v.limit, v.holders, a))
	}
	if slotsOK {
		m.quietSlots = false
	}
}

// allocations asks kubelet which pods hold devices of each resource.
func (m *Manager) allocations() (map[string]*allocation, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	resp, err := podresourcesapi.NewPodResourcesListerClient(m.podres).List(ctx, &podresourcesapi.ListPodResourcesRequest{})
	if err != nil {
		return nil, err
	}
	out := map[string]*allocation{}
	for _, pr := range resp.GetPodResources() {
		for _, c := range pr.GetContainers() {
			for _, d := range c.GetDevices() {
				a := out[d.GetResourceName()]
				if a == nil {
					a = &allocation{pods: map[string]bool{}, ids: map[string]bool{}}
					out[d.GetResourceName()] = a
				}
				a.pods[pr.GetNamespace()+"/"+pr.GetName()] = true
				for _, id := range d.GetDeviceIds() {
					a.ids[id] = true
				}
			}
		}
	}
	return out, nil
}

// register serves each plugin whose socket is missing and registers each
// one kubelet does not know: kubelet removes the plugins' sockets when
// it starts, and a new kubelet.sock is a kubelet that has not seen ours.
//
// With Dial, kubelet's socket cannot be looked at: a plugin is
// registered while kubelet does not watch it (see Options.Dial).
func (m *Manager) register() {
	var ki os.FileInfo
	if m.o.Dial == nil {
		var err error
		if ki, err = os.Stat(m.kubeletSock); err != nil {
			if !m.quietAbsent {
				m.o.Log.Info("device plugin: kubelet's registration socket is not there; VM slots are shown to kubelet once it is", "socket", m.kubeletSock)
				m.quietAbsent = true
			}
			return
		}
	}
	for _, p := range m.plugins {
		serving := p.serving()
		if serving && m.knows(p, ki) {
			continue
		}
		if !serving {
			if err := m.serve(p); err != nil {
				m.o.Log.Warn("device plugin: cannot serve", "resource", p.res.Name, "socket", p.sock, "err", err)
				continue
			}
		}
		if err := m.registerWithKubelet(p); err != nil {
			p.kubelet, p.registered = nil, time.Time{}
			if !m.quietAbsent {
				m.o.Log.Info("device plugin: kubelet does not answer on its registration socket; trying again quietly", "socket", m.kubeletSock, "err", err)
				m.quietAbsent = true
			}
			continue
		}
		p.kubelet, p.registered = ki, time.Now()
		m.quietAbsent = false
		m.o.Log.Info("device plugin registered with kubelet", "resource", p.res.Name, "devices", p.n, "socket", p.sock)
	}
}

// knows is whether kubelet knows p: the kubelet.sock p registered with
// is still there (ki), or, with Dial, kubelet watches p or was told of
// it a moment ago.
func (m *Manager) knows(p *plugin, ki os.FileInfo) bool {
	if m.o.Dial == nil {
		return p.kubelet != nil && sameFile(p.kubelet, ki)
	}
	return !p.registered.IsZero() && (p.watched() || time.Since(p.registered) < m.watchGrace)
}

// serve (re)starts p's gRPC server on its socket, mode 0600.
func (m *Manager) serve(p *plugin) error {
	p.shutdown()
	if fi, err := os.Lstat(p.sock); err == nil {
		if fi.Mode().Type() != os.ModeSocket {
			return fmt.Errorf("%s exists and is not a socket", p.sock)
		}
		os.Remove(p.sock) // ours, from a daemon that did not stop cleanly
	}
	ln, err := net.Listen("unix", p.sock)
	if err != nil {
		return err
	}
	if err := os.Chmod(p.sock, 0o600); err != nil {
		ln.Close()
		return err
	}
	fi, err := os.Lstat(p.sock)
	if err != nil {
		ln.Close()
		return err
	}
	srv := grpc.NewServer()
	pluginapi.RegisterDevicePluginServer(srv, p)
	p.mu.Lock()
	p.srv, p.sockInfo = srv, fi
	p.mu.Unlock()
	m.wg.Go(func() { _ = srv.Serve(ln) })
	return nil
}

func (m *Manager) registerWithKubelet(p *plugin) error {
	conn, err := m.kubeletConn(m.kubeletSock)
	if err != nil {
		return err
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), m.registrationWait)
	defer cancel()
	_, err = pluginapi.NewRegistrationClient(conn).Register(ctx, &pluginapi.RegisterRequest{
		Version:      pluginapi.Version,
		Endpoint:     filepath.Base(p.sock),
		ResourceName: p.res.Name,
		Options:      &pluginapi.DevicePluginOptions{},
	})
	return err
}

// plugin is one resource's DevicePlugin service.
type plugin struct {
	pluginapi.UnimplementedDevicePluginServer

	res  Resource
	n    int // devices: the slots of res.OS
	sock string
	log  *slog.Logger
	quit chan struct{} // closed at Stop: ListAndWatch streams end

	// kubelet is kubelet.sock as it was when p registered, registered
	// when that was; only the manager's loop uses them.
	kubelet    os.FileInfo
	registered time.Time

	mu       sync.Mutex
	devs     []*pluginapi.Device
	changed  chan struct{} // closed (and replaced) when devs change
	srv      *grpc.Server
	sockInfo os.FileInfo // p.sock as p.srv made it
	watchers int         // ListAndWatch streams open
}

// watched is whether a ListAndWatch stream (kubelet's) is open.
func (p *plugin) watched() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.watchers > 0
}

// publish makes devs p's devices and wakes the ListAndWatch streams if
// they changed; unknown are the holders kubelet did not allocate.
func (p *plugin) publish(devs []*pluginapi.Device, unknown []Holder) {
	p.mu.Lock()
	if sameDevices(p.devs, devs) {
		p.mu.Unlock()
		return
	}
	first := p.devs == nil
	p.devs = devs
	close(p.changed)
	p.changed = make(chan struct{})
	p.mu.Unlock()
	if !first || len(unknown) > 0 {
		healthy := 0
		for _, d := range devs {
			if d.Health == pluginapi.Healthy {
				healthy++
			}
		}
		args := []any{"resource", p.res.Name, "healthy", healthy, "of", len(devs)}
		if len(unknown) > 0 {
			args = append(args, "held_outside_kubelet", describe(unknown))
		}
		p.log.Info("device plugin: VM slot devices changed", args...)
	}
}

// serving is whether p's server runs and its socket is still the one it
// made (kubelet deletes the plugins' sockets when it starts).
func (p *plugin) serving() bool {
	p.mu.Lock()
	srv, made := p.srv, p.sockInfo
	p.mu.Unlock()
	if srv == nil {
		return false
	}
	fi, err := os.Lstat(p.sock)
	return err == nil && sameFile(fi, made)
}

// shutdown stops p's server and removes its socket if it is still the
// one the server made.
func (p *plugin) shutdown() {
	p.mu.Lock()
	srv, made := p.srv, p.sockInfo
	p.srv, p.sockInfo = nil, nil
	p.mu.Unlock()
	if srv == nil {
		return
	}
	srv.Stop()
	if fi, err := os.Lstat(p.sock); err == nil && sameFile(fi, made) {
		os.Remove(p.sock)
	}
}

// GetDevicePluginOptions: no PreStartContainer, no preferred allocation.
func (p *plugin) GetDevicePluginOptions(context.Context, *pluginapi.Empty) (*pluginapi.DevicePluginOptions, error) {
	return &pluginapi.DevicePluginOptions{}, nil
}

// ListAndWatch sends the devices, then again whenever they change.
func (p *plugin) ListAndWatch(_ *pluginapi.Empty, st grpc.ServerStreamingServer[pluginapi.ListAndWatchResponse]) error {
	p.mu.Lock()
	p.watchers++
	p.mu.Unlock()
	defer func() {
		p.mu.Lock()
		p.watchers--
		p.mu.Unlock()
	}()
	for {
		p.mu.Lock()
		devs, changed := p.devs, p.changed
		p.mu.Unlock()
		if err := st.Send(&pluginapi.ListAndWatchResponse{Devices: devs}); err != nil {
			return err
		}
		select {
		case <-changed:
		case <-st.Context().Done():
			return nil
		case <-p.quit:
			return nil
		}
	}
}

// Allocate gives each container nothing: the device is a count, the VM
// gets its slot when it boots.
func (p *plugin) Allocate(_ context.Context, r *pluginapi.AllocateRequest) (*pluginapi.AllocateResponse, error) {
	resp := &pluginapi.AllocateResponse{}
	for _, c := range r.GetContainerRequests() {
		for _, id := range c.GetDevicesIds() {
			if !p.known(id) {
				return nil, fmt.Errorf("device plugin %s: no device %q", p.res.Name, id)
			}
		}
		resp.ContainerResponses = append(resp.ContainerResponses, &pluginapi.ContainerAllocateResponse{})
	}
	return resp, nil
}

func (p *plugin) known(id string) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, d := range p.devs {
		if d.ID == id {
			return true
		}
	}
	return false
}

// PreStartContainer is never asked for (PreStartRequired is false).
func (p *plugin) PreStartContainer(context.Context, *pluginapi.PreStartContainerRequest) (*pluginapi.PreStartContainerResponse, error) {
	return &pluginapi.PreStartContainerResponse{}, nil
}

// GetPreferredAllocation is never asked for (not advertised).
func (p *plugin) GetPreferredAllocation(context.Context, *pluginapi.PreferredAllocationRequest) (*pluginapi.PreferredAllocationResponse, error) {
	return nil, errors.New("no preferred allocation")
}

// sameFile is whether a and b are one file: os.SameFile, and the same
// modification time, since a socket made again may get the inode just
// freed.
func sameFile(a, b os.FileInfo) bool {
	return os.SameFile(a, b) && a.ModTime().Equal(b.ModTime())
}

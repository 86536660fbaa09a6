package cri

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	goruntime "runtime"
	"sync/atomic"

	"github.com/containerd/errdefs"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/macvz/macvz/cri/config"
	"github.com/macvz/macvz/cri/deviceplugin"
	"github.com/macvz/macvz/runtime/agentapi"
	"github.com/macvz/macvz/runtime/nodevm"
	"github.com/macvz/macvz/runtime/store"
)

// The node VM (runtime/nodevm) is a sandbox of the daemon's own. Every
// verb finds records through sandbox and container, and every list keeps
// them through visible: the node VM and its kubelet exist only for the
// supervisor's context. kubelet, in the node VM, would otherwise see the
// VM it runs in as an orphaned pod and remove it.

// hidden reports whether a node VM record is out of ctx's sight.
func hidden(ctx context.Context, node bool) bool { return node && !nodevm.Internal(ctx) }

// sandbox finds a sandbox by ID or unique prefix, as ctx may see it.
func (s *Service) sandbox(ctx context.Context, id string) (store.Sandbox, error) {
	sb, err := s.st.Sandbox(id)
	if err == nil && hidden(ctx, sb.Node) {
		return store.Sandbox{}, fmt.Errorf("sandbox %q: %w", id, errdefs.ErrNotFound)
	}
	return sb, err
}

// container finds a container by ID or unique prefix, as ctx may see it.
func (s *Service) container(ctx context.Context, id string) (store.Container, error) {
	c, err := s.st.Container(id)
	if err == nil && hidden(ctx, c.Node) {
		return store.Container{}, fmt.Errorf("container %q: %w", id, errdefs.ErrNotFound)
	}
	return c, err
}

// visibleSandboxes wraps a list filter so that it drops what ctx may not
// see.
func visibleSandboxes(ctx context.Context, keep func(*store.Sandbox) bool) func(*store.Sandbox) bool {
	return func(sb *store.Sandbox) bool {
		return !hidden(ctx, sb.Node) && (keep == nil || keep(sb))
	}
}

// visibleContainers is visibleSandboxes for containers.
func visibleContainers(ctx context.Context, keep func(*store.Container) bool) func(*store.Container) bool {
	return func(c *store.Container) bool {
		return !hidden(ctx, c.Node) && (keep == nil || keep(c))
	}
}

// Agent is the guest agent of a sandbox's VM, for the node-VM supervisor
// (ctx must be its own).
func (s *Service) Agent(ctx context.Context, id string) (agentapi.AgentClient, error) {
	sb, err := s.sandbox(ctx, id)
	if err != nil {
		return nil, err
	}
	c, err := s.ctl.Shim(ctx, sb)
	if err != nil {
		return nil, err
	}
	return c.Agent(), nil
}

// nodeVMConfig is the supervisor's configuration from [node]; an unset
// size is the host's.
func nodeVMConfig(cfg *config.Config, streamAddr string) nodevm.Config {
	c := nodevm.Config{
		Image:       cfg.Node.Image,
		KubeletArgs: cfg.Node.KubeletArgs,
		Shares:      cfg.Node.Shares,
		MilliCPU:    int64(cfg.Node.CPUs) * 1000,
		MemoryBytes: cfg.Node.MemoryBytes,
		LogDir:      cfg.Node.LogDir,
		CRISocket:   cfg.Socket,
		StreamAddr:  streamAddr,
		ImageFs:     cfg.Root,
		ImageFsDir:  nodeImageFsDir(cfg.Root),
	}
	if cfg.Node.Network == config.NodeNetworkPod {
		c.PodNetwork = true
		c.DNS = nodevm.HostDNS(nodevm.HostResolvConfs...)
	}
	if cfg.Node.JoinsCluster() {
		// A standalone kubelet keeps its ports to itself (and two such
		// daemons on one host do not race for them).
		c.Ports = cfg.Node.Ports
	}
	if c.MilliCPU == 0 {
		c.MilliCPU = int64(goruntime.NumCPU()) * 1000
	}
	if c.MemoryBytes == 0 {
		c.MemoryBytes = hostMemoryBytes()
	}
	if c.LogDir == "" {
		c.LogDir = filepath.Join(cfg.State, "node")
	}
	c.NodeIP = cfg.Node.NodeIP
	if c.NodeIP == "" {
		c.NodeIP = cfg.Node.KubeletNodeIP()
	}
	if c.NodeIP == "" {
		ip, err := defaultRouteAddr()
		if err != nil {
			slog.Warn("node VM: no node IP (node.node_ip unset, and no default route): kubelet reports the VM's own NAT address, which the cluster cannot reach", "err", err)
		}
		c.NodeIP = ip
	}
	if ip, err := netip.ParseAddr(c.NodeIP); err == nil {
		c.NodeIP = ip.Unmap().String()
	}
	return c
}

// defaultRouteAddr is the host's address on its default route: a UDP
// "connection" to a public address (the 6to4 relay anycast, and one of
// IPv6's documentation prefix, which no LAN holds) only picks the route
// and its source address; nothing is sent. IPv4 first: kubelet reports
// one address.
func defaultRouteAddr() (string, error) {
	var errs []error
	for _, probe := range []string{"192.88.99.1:9", "[2001:db8::1]:9"} {
		c, err := net.Dial("udp", probe)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		ip := c.LocalAddr().(*net.UDPAddr).IP
		c.Close()
		if ip.IsGlobalUnicast() {
			return ip.String(), nil
		}
	}
	return "", errors.Join(errs...)
}

// StartNodeVM runs the node VM's supervisor when [node] enables it; the
// returned stop ends the supervisor (the VM keeps running, as every VM
// does when the daemon stops).
func StartNodeVM(s *Service) (stop func()) {
	if !s.cfg.Node.Enabled {
		s.removeNodeVMs()
		return nil
	}
	if err := os.MkdirAll(s.nodeVMConfig().LogDir, 0o700); err != nil {
		slog.Error("node VM: its log directory", "err", err)
		return nil
	}
	// The shares are mounted into the node VM: they must exist.
	for _, p := range append([]string{nodeImageFsDir(s.cfg.Root)}, s.cfg.Node.Shares...) {
		if err := os.MkdirAll(p, 0o755); err != nil {
			slog.Error("node VM: a share", "path", p, "err", err)
			return nil
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	cfg := s.nodeVMConfig()
	var sup atomic.Pointer[nodevm.Supervisor]
	stopPlugin := s.nodeDevicePlugin(&cfg, &sup)
	s.node = nodevm.New(cfg, s, slog.Default())
	sup.Store(s.node)
	done := make(chan struct{})
	go func() {
		defer close(done)
		s.node.Run(ctx)
	}()
	return func() {
		cancel()
		<-done
		if stopPlugin != nil {
			stopPlugin()
		}
	}
}

// nodeDevicePlugin shows the node VM's kubelet the VM slots ([kubelet]
// device_plugin; the plugin cmd/macvz starts looks for a kubelet on the
// host): kubelet's sockets are reached through the node VM's agent
// (sup, once set), and the plugins' sockets, made in the state
// directory, are served in kubelet's device-plugin directory in the VM
// (cfg.DevicePlugins). It returns the plugins' stop, nil when none runs.
func (s *Service) nodeDevicePlugin(cfg *nodevm.Config, sup *atomic.Pointer[nodevm.Supervisor]) (stop func()) {
	if !s.cfg.Kubelet.DevicePlugin {
		return nil
	}
	dir := filepath.Join(s.cfg.State, "node-device-plugins")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		slog.Warn("node VM: device plugin not started", "err", err)
		return nil
	}
	var res []deviceplugin.Resource
	if s.cfg.Backend == "vz" {
		res = append(res, deviceplugin.Resource{Name: deviceplugin.MacOSResource, OS: "darwin"})
	}
	res = append(res, deviceplugin.Resource{Name: deviceplugin.LinuxResource, OS: "linux"})
	m, err := deviceplugin.Start(deviceplugin.Options{
		Dir:       agentapi.KubeletPluginDir,
		SocketDir: dir,
		Resources: res,
		Slots:     s,
		Log:       slog.Default().With("component", "node-vm-device-plugin"),
		Dial: func(ctx context.Context, path string) (net.Conn, error) {
			n := sup.Load()
			if n == nil {
				return nil, fmt.Errorf("the node VM's supervisor is not started: %w", errdefs.ErrUnavailable)
			}
			return n.DialKubelet(ctx, path)
		},
	})
	if err != nil {
		// kubelet schedules as before, without the slots.
		slog.Warn("node VM: device plugin not started", "err", err)
		return nil
	}
	for _, r := range m.Resources() {
		cfg.DevicePlugins = append(cfg.DevicePlugins, filepath.Join(dir, deviceplugin.SocketName(r)))
	}
	if len(cfg.DevicePlugins) > 0 {
		slog.Info("device plugin for the node VM's kubelet started", "resources", m.Resources(), "dir", dir)
	}
	return m.Stop
}

func (s *Service) nodeVMConfig() nodevm.Config {
	return nodeVMConfig(s.cfg, s.stream.ln.Addr().String())
}

// removeNodeVMs removes a node VM an earlier daemon left running: [node]
// is off now, and nothing else would ever stop it.
func (s *Service) removeNodeVMs() {
	ctx := nodevm.WithInternal(context.Background())
	sbs, err := s.st.Sandboxes(func(sb *store.Sandbox) bool { return sb.Node })
	if err != nil {
		slog.Warn("node VM: listing leftovers", "err", err)
		return
	}
	for _, sb := range sbs {
		slog.Info("removing the node VM: [node] is not enabled", "sandbox", sb.ID)
		if _, err := s.StopPodSandbox(ctx, &runtimeapi.StopPodSandboxRequest{PodSandboxId: sb.ID}); err != nil {
			slog.Warn("node VM: stopping a leftover", "sandbox", sb.ID, "err", err)
		}
		if _, err := s.RemovePodSandbox(ctx, &runtimeapi.RemovePodSandboxRequest{PodSandboxId: sb.ID}); err != nil {
			slog.Warn("node VM: removing a leftover", "sandbox", sb.ID, "err", err)
		}
	}
}

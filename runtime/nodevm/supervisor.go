package nodevm

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/macvz/macvz/runtime/agentapi"
	"github.com/macvz/macvz/runtime/guestfwd"
	"github.com/macvz/macvz/runtime/nodevm/memvol"
)

// The node image's kubelet and its root dir (a tmpfs of the image's
// /etc/fstab).
const (
	KubeletPath    = "/usr/bin/kubelet"
	KubeletRootDir = "/var/lib/kubelet"
)

// Runtime is what the Supervisor needs of the daemon: its CRI verbs,
// called in process with an internal context, and the agent of a
// sandbox's VM.
type Runtime interface {
	RunPodSandbox(context.Context, *runtimeapi.RunPodSandboxRequest) (*runtimeapi.RunPodSandboxResponse, error)
	PodSandboxStatus(context.Context, *runtimeapi.PodSandboxStatusRequest) (*runtimeapi.PodSandboxStatusResponse, error)
	ListPodSandbox(context.Context, *runtimeapi.ListPodSandboxRequest) (*runtimeapi.ListPodSandboxResponse, error)
	StopPodSandbox(context.Context, *runtimeapi.StopPodSandboxRequest) (*runtimeapi.StopPodSandboxResponse, error)
	RemovePodSandbox(context.Context, *runtimeapi.RemovePodSandboxRequest) (*runtimeapi.RemovePodSandboxResponse, error)
	CreateContainer(context.Context, *runtimeapi.CreateContainerRequest) (*runtimeapi.CreateContainerResponse, error)
	StartContainer(context.Context, *runtimeapi.StartContainerRequest) (*runtimeapi.StartContainerResponse, error)
	ListContainers(context.Context, *runtimeapi.ListContainersRequest) (*runtimeapi.ListContainersResponse, error)
	RemoveContainer(context.Context, *runtimeapi.RemoveContainerRequest) (*runtimeapi.RemoveContainerResponse, error)
	PullImage(context.Context, *runtimeapi.PullImageRequest) (*runtimeapi.PullImageResponse, error)
	ImageStatus(context.Context, *runtimeapi.ImageStatusRequest) (*runtimeapi.ImageStatusResponse, error)
	// Agent is the guest agent of a ready sandbox's VM.
	Agent(ctx context.Context, sandboxID string) (agentapi.AgentClient, error)
}

// Config is the node VM's part of the daemon's configuration ([node]).
type Config struct {
	// Image is the node image's reference.
	Image string
	// KubeletArgs are kubelet's arguments; the Supervisor adds none but
	// the CRI endpoints (GuestSocket) and StatsFeatureGate before them.
	KubeletArgs []string
	// Shares are host directories mounted in the node VM at the same
	// path, read-write (kubelet's root dir, /var/log/pods,
	// /var/log/containers, its configuration and PKI).
	Shares []string
	// MilliCPU and MemoryBytes size the node VM (0: the daemon's
	// defaults).
	MilliCPU    int64
	MemoryBytes int64
	// LogDir holds kubelet's log (kubelet.log, CRI format).
	LogDir string
	// CRISocket is the daemon's CRI socket on the host.
	CRISocket string
	// StreamAddr is the streaming server's host:port on the host; the
	// node VM gets the same port on its loopback, so the URLs the daemon
	// returns for exec, attach and port-forward work there.
	StreamAddr string
	// NodeIP is the host's address that kubelet reports (--node-ip, added
	// unless KubeletArgs has it). kubelet accepts only an address of its
	// own interfaces, so the VM gets it on its loopback without the
	// address's local route: the VM's connections to it (a host-network
	// pod's probes) still leave through the NAT to the host. "" = none.
	NodeIP string
	// Ports are forwarded from NodeIP on the host (every address when
	// NodeIP is "") to the same ports in the node VM: kubelet's API,
	// which the API server dials for exec, logs and port-forward.
	Ports []int
	// PodNetwork puts the node VM on the pod network (through the CNI
	// plugin, as a pod) instead of the hypervisor's NAT: kubelet's
	// probes then reach pod IPs from the VM itself, which a Mac needs
	// (VMs on vz's NAT cannot reach each other). Ports become its
	// hostPorts on NodeIP; the node IP trick stays, its connections
	// leaving through the pod network's gateway to the host.
	PodNetwork bool
	// DNS is the node VM's resolv.conf on the pod network (nil: the CNI
	// result's), where kubelet finds the resolvers it gives pods of
	// dnsPolicy Default; the NAT has its own resolver.
	DNS *runtimeapi.DNSConfig
	// ImageFs is the image filesystem's mountpoint as the daemon's
	// ImageFsInfo names it, ImageFsDir a host directory on that file
	// system ("" = none). kubelet asks its cAdvisor for the capacity and
	// free space of that path, and cAdvisor knows only the file systems
	// it has a plugin for (no 9p, no virtiofs), read when kubelet
	// starts. So kubelet's container gets ImageFsDir shared read-only
	// and, before kubelet starts, a read-only overlay at ImageFs whose
	// top layer is that share: overlayfs answers statfs with its top
	// layer's, which the share answers with the host's.
	ImageFs, ImageFsDir string
	// DevicePlugins are the host sockets of the daemon's device plugins
	// (cri/deviceplugin), each served in kubelet's device-plugin
	// directory in the VM under its base name, which must start with
	// agentapi.KubeletPluginPrefix.
	DevicePlugins []string
}

// Backoff bounds the waits between attempts after a failure.
var Backoff = struct{ Min, Max time.Duration }{time.Second, 5 * time.Minute}

// pollEvery is how often the Supervisor checks the VM and kubelet.
var pollEvery = 2 * time.Second

// Status is what `macvz node status` shows.
type Status struct {
	// State: "starting", "running", "backing-off", "stopped".
	State       string    `json:"state"`
	SandboxID   string    `json:"sandboxID,omitempty"`
	ContainerID string    `json:"containerID,omitempty"`
	Image       string    `json:"image"`
	Since       time.Time `json:"since"`
	// Restarts counts kubelet's and the VM's restarts since the daemon
	// started.
	Restarts int `json:"restarts"`
	// LastError is why the node VM last went down (kept once it runs
	// again).
	LastError string `json:"lastError,omitempty"`
	LogPath   string `json:"logPath"`
	// PodIP is the node VM's address on the pod network
	// (Config.PodNetwork).
	PodIP string `json:"podIP,omitempty"`
}

// Supervisor keeps the node VM and its kubelet running.
type Supervisor struct {
	cfg Config
	rt  Runtime
	log *slog.Logger

	mu     sync.Mutex
	status Status
	// stopped: Stop asked that no node VM run (until Restart);
	// restart: Restart asked for a new one. poke says either changed.
	stopped, restart bool
	poke             chan struct{}
}

// New returns a Supervisor; Run starts it.
func New(cfg Config, rt Runtime, log *slog.Logger) *Supervisor {
	if log == nil {
		log = slog.Default()
	}
	return &Supervisor{cfg: cfg, rt: rt, log: log.With("component", "node-vm"),
		status: Status{State: "stopped", Image: cfg.Image, LogPath: filepath.Join(cfg.LogDir, Container+".log")},
		poke:   make(chan struct{}, 1)}
}

// Status is the node VM's state now.
func (s *Supervisor) Status() Status {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.status
}

// Restart asks for the node VM to be made again (its kubelet with it),
// or started again after Stop.
func (s *Supervisor) Restart() {
	s.mu.Lock()
	s.restart, s.stopped = true, false
	s.mu.Unlock()
	s.wake()
}

// Stop asks for the node VM to be removed and left so until Restart (or
// the daemon's next start).
func (s *Supervisor) Stop() {
	s.mu.Lock()
	s.stopped = true
	s.mu.Unlock()
	s.wake()
}

func (s *Supervisor) wake() {
	select {
	case s.poke <- struct{}{}:
	default:
	}
}

// asked is what Stop and Restart asked since the last call.
func (s *Supervisor) asked() (stop, restart bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	stop, restart = s.stopped, s.restart
	s.restart = false
	return stop, restart
}

func (s *Supervisor) set(f func(*Status)) {
	s.mu.Lock()
	defer s.mu.Unlock()
	f(&s.status)
}

// Run keeps the node VM running until ctx ends. The VM is not stopped
// then: like every VM it outlives the daemon, and the next daemon's
// Supervisor adopts it (kubelet keeps running meanwhile; only its CRI
// connection waits).
func (s *Supervisor) Run(ctx context.Context) {
	ctx = WithInternal(ctx)
	wait := Backoff.Min
	for ctx.Err() == nil {
		if stop, _ := s.asked(); stop {
			// Stopped by Stop: nothing runs until Restart.
			s.set(func(st *Status) {
				st.State, st.Since, st.SandboxID, st.ContainerID, st.PodIP = "stopped", time.Now(), "", "", ""
			})
			s.log.Info("node VM stopped; `macvz node restart` starts it again")
			select {
			case <-ctx.Done():
			case <-s.poke:
			}
			wait = Backoff.Min
			continue
		}
		err := s.runOnce(ctx)
		if ctx.Err() != nil {
			break
		}
		if errors.Is(err, errStop) {
			continue
		}
		forced := errors.Is(err, errRestart)
		if forced {
			wait = Backoff.Min
		}
		s.set(func(st *Status) {
			st.State, st.Since, st.Restarts = "backing-off", time.Now(), st.Restarts+1
			if err != nil && !forced {
				st.LastError = err.Error()
			}
		})
		s.log.Warn("the node VM is down; starting it again", "err", err, "in", wait)
		select {
		case <-ctx.Done():
		case <-s.poke:
			// Stop or Restart: the loop's top and runOnce see which.
			s.wake()
		case <-time.After(wait):
		}
		if !forced {
			wait = min(2*wait, Backoff.Max)
		}
	}
	s.set(func(st *Status) { st.State, st.Since = "stopped", time.Now() })
}

var (
	errRestart = errors.New("restart asked")
	errStop    = errors.New("stop asked")
)

// runOnce brings the node VM up (adopting one that runs) and watches it
// until it or kubelet fails, or a restart is asked.
func (s *Supervisor) runOnce(ctx context.Context) error {
	s.set(func(st *Status) { st.State, st.Since = "starting", time.Now() })
	sbID, ctrID, err := s.ensure(ctx)
	if err != nil {
		return err
	}
	podIP := s.podIP(ctx, sbID)
	s.set(func(st *Status) {
		st.State, st.Since, st.SandboxID, st.ContainerID, st.PodIP = "running", time.Now(), sbID, ctrID, podIP
	})
	s.log.Info("node VM running", "sandbox", sbID, "container", ctrID, "podIP", podIP)

	// The forwards end (stopFwd) before their wait (deferred first).
	var wg sync.WaitGroup
	defer wg.Wait()
	fwdCtx, stopFwd := context.WithCancel(ctx)
	defer stopFwd()
	if err := s.forward(fwdCtx, &wg, sbID); err != nil {
		return err
	}
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-s.poke:
			stop, restart := s.asked()
			switch {
			case stop:
				s.log.Info("stop asked: removing the node VM", "sandbox", sbID)
				s.remove(ctx, sbID)
				return errStop
			case restart:
				s.log.Info("restart asked: removing the node VM", "sandbox", sbID)
				s.remove(ctx, sbID)
				return errRestart
			}
		case <-time.After(pollEvery):
		}
		ok, why, err := s.healthy(ctx, sbID, ctrID)
		if err != nil {
			s.log.Warn("checking the node VM", "sandbox", sbID, "err", err)
			continue
		}
		if !ok {
			s.remove(ctx, sbID)
			return errors.New(why)
		}
	}
}

// forward serves the daemon's CRI socket and streaming server inside
// the VM until ctx ends.
func (s *Supervisor) forward(ctx context.Context, wg *sync.WaitGroup, sbID string) error {
	agent, err := s.rt.Agent(ctx, sbID)
	if err != nil {
		return fmt.Errorf("the node VM's agent: %w", err)
	}
	fwds := []guestfwd.Forward{{
		Listen: "unix:" + GuestSocket,
		Dial: func(ctx context.Context) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", s.cfg.CRISocket)
		},
	}}
	// kubelet's tmpfs volumes, asked of the host by the image's mount
	// helper (memvol).
	fwds = append(fwds, guestfwd.Forward{
		Listen: "unix:" + memvol.GuestSocket,
		Dial:   memvol.Dialer(ctx, &memvol.Handler{Roots: s.cfg.Shares, Log: s.log.With("sandbox", sbID)}),
	})
	fwds = append(fwds, s.devicePluginForwards()...)
	if s.cfg.StreamAddr != "" {
		_, port, err := net.SplitHostPort(s.cfg.StreamAddr)
		if err != nil {
			return fmt.Errorf("the streaming server's address %q: %w", s.cfg.StreamAddr, err)
		}
		fwds = append(fwds, guestfwd.Forward{
			Listen: "tcp:127.0.0.1:" + port,
			Dial: func(ctx context.Context) (net.Conn, error) {
				var d net.Dialer
				return d.DialContext(ctx, "tcp", s.cfg.StreamAddr)
			},
		})
	}
	for _, f := range fwds {
		wg.Add(1)
		go func() {
			defer wg.Done()
			guestfwd.Serve(ctx, s.log.With("sandbox", sbID), agent, f)
		}()
	}
	return nil
}

// ensure returns the running node VM and kubelet container, adopting
// them when they run, else making them (removing what is left of an
// earlier one).
func (s *Supervisor) ensure(ctx context.Context) (sbID, ctrID string, err error) {
	sbs, err := s.rt.ListPodSandbox(ctx, &runtimeapi.ListPodSandboxRequest{Filter: &runtimeapi.PodSandboxFilter{
		LabelSelector: map[string]string{Label: "true"}}})
	if err != nil {
		return "", "", err
	}
	for _, sb := range sbs.GetItems() {
		// A node VM on the other network ([node] network changed since
		// it was made) is made again rather than adopted.
		if sb.GetState() == runtimeapi.PodSandboxState_SANDBOX_READY && sbID == "" && s.networkIsConfigured(ctx, sb.GetId()) {
			if id, ok := s.runningKubelet(ctx, sb.GetId()); ok {
				s.log.Info("adopting the running node VM", "sandbox", sb.GetId())
				sbID, ctrID = sb.GetId(), id
				continue
			}
		}
		s.remove(ctx, sb.GetId())
	}
	if sbID != "" {
		return sbID, ctrID, nil
	}
	if err := s.pull(ctx); err != nil {
		return "", "", err
	}
	podCfg := s.podConfig()
	run, err := s.rt.RunPodSandbox(ctx, &runtimeapi.RunPodSandboxRequest{Config: podCfg})
	if err != nil {
		return "", "", fmt.Errorf("starting the node VM: %w", err)
	}
	sbID = run.GetPodSandboxId()
	created, err := s.rt.CreateContainer(ctx, &runtimeapi.CreateContainerRequest{
		PodSandboxId: sbID, Config: s.containerConfig(), SandboxConfig: podCfg})
	if err != nil {
		s.remove(ctx, sbID)
		return "", "", fmt.Errorf("creating kubelet in the node VM: %w", err)
	}
	if _, err := s.rt.StartContainer(ctx, &runtimeapi.StartContainerRequest{ContainerId: created.GetContainerId()}); err != nil {
		s.remove(ctx, sbID)
		return "", "", fmt.Errorf("starting kubelet in the node VM: %w", err)
	}
	return sbID, created.GetContainerId(), nil
}

// networkIsConfigured reports whether the sandbox's network is the one
// Config asks for (true when its status cannot say: adopting beats
// making the VM again for a passing failure).
func (s *Supervisor) networkIsConfigured(ctx context.Context, sbID string) bool {
	st, err := s.rt.PodSandboxStatus(ctx, &runtimeapi.PodSandboxStatusRequest{PodSandboxId: sbID})
	opts := st.GetStatus().GetLinux().GetNamespaces().GetOptions()
	if err != nil || opts == nil {
		return true
	}
	return opts.GetNetwork() == s.podConfig().GetLinux().GetSecurityContext().GetNamespaceOptions().GetNetwork()
}

// runningKubelet is the sandbox's running kubelet container, if any.
func (s *Supervisor) runningKubelet(ctx context.Context, sbID string) (string, bool) {
	cs, err := s.rt.ListContainers(ctx, &runtimeapi.ListContainersRequest{Filter: &runtimeapi.ContainerFilter{
		PodSandboxId: sbID, State: &runtimeapi.ContainerStateValue{State: runtimeapi.ContainerState_CONTAINER_RUNNING}}})
	if err != nil {
		return "", false
	}
	for _, c := range cs.GetContainers() {
		if c.GetMetadata().GetName() == Container {
			return c.GetId(), true
		}
	}
	return "", false
}

// podIP is the node VM's pod IP ("" on the NAT, or unknown).
func (s *Supervisor) podIP(ctx context.Context, sbID string) string {
	if !s.cfg.PodNetwork {
		return ""
	}
	st, err := s.rt.PodSandboxStatus(ctx, &runtimeapi.PodSandboxStatusRequest{PodSandboxId: sbID})
	if err != nil {
		return ""
	}
	return st.GetStatus().GetNetwork().GetIp()
}

// healthy reports whether the VM is ready and kubelet runs, and if not,
// why.
func (s *Supervisor) healthy(ctx context.Context, sbID, ctrID string) (bool, string, error) {
	st, err := s.rt.PodSandboxStatus(ctx, &runtimeapi.PodSandboxStatusRequest{PodSandboxId: sbID})
	if status.Code(err) == codes.NotFound {
		return false, "the node VM's sandbox is gone", nil
	}
	if err != nil {
		return false, "", err
	}
	if st.GetStatus().GetState() != runtimeapi.PodSandboxState_SANDBOX_READY {
		return false, "the node VM stopped", nil
	}
	if id, ok := s.runningKubelet(ctx, sbID); !ok || id != ctrID {
		return false, "kubelet in the node VM exited", nil
	}
	return true, "", nil
}

// remove stops and removes a node VM sandbox; failures are logged (the
// next attempt retries them).
func (s *Supervisor) remove(ctx context.Context, sbID string) {
	ctx = context.WithoutCancel(ctx)
	if _, err := s.rt.StopPodSandbox(ctx, &runtimeapi.StopPodSandboxRequest{PodSandboxId: sbID}); err != nil && status.Code(err) != codes.NotFound {
		s.log.Warn("stopping the node VM", "sandbox", sbID, "err", err)
	}
	if _, err := s.rt.RemovePodSandbox(ctx, &runtimeapi.RemovePodSandboxRequest{PodSandboxId: sbID}); err != nil && status.Code(err) != codes.NotFound {
		s.log.Warn("removing the node VM", "sandbox", sbID, "err", err)
	}
}

// pull pulls the node image unless it is there.
func (s *Supervisor) pull(ctx context.Context) error {
	spec := &runtimeapi.ImageSpec{Image: s.cfg.Image}
	st, err := s.rt.ImageStatus(ctx, &runtimeapi.ImageStatusRequest{Image: spec})
	if err == nil && st.GetImage() != nil {
		return nil
	}
	s.log.Info("pulling the node image", "image", s.cfg.Image)
	if _, err := s.rt.PullImage(ctx, &runtimeapi.PullImageRequest{Image: spec}); err != nil {
		return fmt.Errorf("pulling the node image %s: %w", s.cfg.Image, err)
	}
	return nil
}

// podConfig is the node VM's sandbox: the host's network or the pod
// network (either way the node's address is the host's; kubelet's port
// is forwarded or a hostPort), sized by Config.
func (s *Supervisor) podConfig() *runtimeapi.PodSandboxConfig {
	netMode := runtimeapi.NamespaceMode_NODE
	if s.cfg.PodNetwork {
		netMode = runtimeapi.NamespaceMode_POD
	}
	cfg := &runtimeapi.PodSandboxConfig{
		Metadata:     &runtimeapi.PodSandboxMetadata{Name: PodName, Namespace: PodNamespace, Uid: PodUID},
		Hostname:     PodName,
		LogDirectory: s.cfg.LogDir,
		Labels:       map[string]string{Label: "true"},
		Annotations:  map[string]string{SharesAnnotation: EncodeShares(s.cfg.Shares)},
		Linux: &runtimeapi.LinuxPodSandboxConfig{
			SecurityContext: &runtimeapi.LinuxSandboxSecurityContext{
				NamespaceOptions: &runtimeapi.NamespaceOption{Network: netMode},
				Privileged:       true,
			},
		},
	}
	if s.cfg.PodNetwork {
		cfg.DnsConfig = s.cfg.DNS
	}
	// The same mappings either way: the NAT's forwards of a host-network
	// sandbox, or a pod-network sandbox's hostPorts (the CNI plugin's,
	// else the daemon's proxy).
	for _, p := range s.cfg.Ports {
		cfg.PortMappings = append(cfg.PortMappings, &runtimeapi.PortMapping{
			Protocol: runtimeapi.Protocol_TCP, ContainerPort: int32(p), HostPort: int32(p), HostIp: s.cfg.NodeIP})
	}
	if s.cfg.MilliCPU > 0 || s.cfg.MemoryBytes > 0 {
		cfg.Linux.Resources = &runtimeapi.LinuxContainerResources{
			CpuPeriod: 100000, CpuQuota: s.cfg.MilliCPU * 100, MemoryLimitInBytes: s.cfg.MemoryBytes}
	}
	return cfg
}

// memvolScript binds, before kubelet starts, the host's tmpfs volumes
// of kubelet's pods in its container (memvol.Reply.Paths); kubelet
// starts even if that fails.
const memvolScript = ` && { ` + memvol.HelperDir + `/` + memvol.RestoreName + ` restore || true; }`

// containerConfig is kubelet: the image's binary with Config's
// arguments, the shares at their host paths.
func (s *Supervisor) containerConfig() *runtimeapi.ContainerConfig {
	args := append([]string{
		"--container-runtime-endpoint=unix://" + GuestSocket,
		"--image-service-endpoint=unix://" + GuestSocket,
		StatsFeatureGate,
	}, s.cfg.KubeletArgs...)
	if s.cfg.NodeIP != "" {
		// The node IP is not local in the VM (see nodeIPScript): kubelet
		// listens on every address, which only the forwarded ports (or
		// hostPorts, and pods on the pod network) reach.
		all := "0.0.0.0"
		if ip, err := netip.ParseAddr(s.cfg.NodeIP); err == nil && ip.Is6() {
			all = "::"
		}
		args = append(args, "--address="+all)
		if !hasFlag(s.cfg.KubeletArgs, "node-ip") {
			args = append(args, "--node-ip="+s.cfg.NodeIP)
		}
	}
	c := &runtimeapi.ContainerConfig{
		Metadata: &runtimeapi.ContainerMetadata{Name: Container},
		Image:    &runtimeapi.ImageSpec{Image: s.cfg.Image},
		// kubelet bind-mounts its root dir onto itself, not recursively,
		// unless it is already a shared mount (hostutil.DoMakeRShared):
		// that would hide the host's pods/ mounted below it. In the
		// container's mount namespace (a slave of the guest's) it is made
		// shared first.
		Command: []string{"/bin/sh", "-c", `mount --make-rshared ` + KubeletRootDir + s.imageFsScript() + memvolScript + s.nodeIPScript() + ` && exec ` + KubeletPath + ` "$@"`, "kubelet"},
		Args:    args,
		LogPath: Container + ".log",
		Labels:  map[string]string{Label: "true"},
		// The mount helper first (memvol): kubelet runs mount and umount
		// by name.
		Envs: []*runtimeapi.KeyValue{{Key: "PATH", Value: []byte(memvol.HelperDir + ":/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")}},
		// Every capability: kubelet reads /dev/kmsg, sets sysctls and
		// OOM scores, mounts volumes.
		Linux: &runtimeapi.LinuxContainerConfig{SecurityContext: &runtimeapi.LinuxContainerSecurityContext{Privileged: true}},
	}
	for _, p := range s.cfg.Shares {
		c.Mounts = append(c.Mounts, &runtimeapi.Mount{HostPath: p, ContainerPath: p})
	}
	if s.cfg.ImageFs != "" && s.cfg.ImageFsDir != "" {
		c.Mounts = append(c.Mounts, &runtimeapi.Mount{HostPath: s.cfg.ImageFsDir, ContainerPath: imageFsShare, Readonly: true})
	}
	return c
}

// StatsFeatureGate makes kubelet take pods' and containers' stats and
// /metrics/cadvisor from the CRI: its cAdvisor sees the node VM, where
// no pod runs. It comes before KubeletArgs: kubelet merges repeated
// --feature-gates flags, the last value of a gate winning, and puts the
// flags over its config file's featureGates, so a user's own
// --feature-gates keeps its other gates and can turn this one off (the
// config file cannot).
const StatsFeatureGate = "--feature-gates=PodAndContainerStatsFromCRI=true"

// Where the node VM has the image filesystem's share and the empty
// bottom layer of its overlay (overlayfs needs two layers when it has no
// upper one; the top one, first in lowerdir, answers statfs).
const (
	imageFsShare = "/run/macvz-imagefs/host"
	imageFsEmpty = "/run/macvz-imagefs/empty"
)

// imageFsScript mounts the image filesystem's overlay (Config.ImageFs).
// A failure is said in kubelet's log and kubelet starts anyway: without
// the image filesystem's size it runs as before (no image GC).
func (s *Supervisor) imageFsScript() string {
	if s.cfg.ImageFs == "" || s.cfg.ImageFsDir == "" {
		return ""
	}
	mp := shellQuote(s.cfg.ImageFs)
	return fmt.Sprintf(" && { mkdir -p %s %s && mount -t overlay -o ro,lowerdir=%s:%s overlay %s || echo 'macvz: the image filesystem is not mounted at '%s >&2; }",
		imageFsEmpty, mp, imageFsShare, imageFsEmpty, mp, mp)
}

// shellQuote quotes s for sh.
func shellQuote(s string) string { return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'" }

// nodeIPScript gives the VM the node IP for kubelet's --node-ip check
// (an address of its interfaces) without making it local: with the
// address's route gone from the local table, the VM's connections to it
// leave through the NAT (or the pod network's gateway) and reach the
// host, as kubelet's probes of a host-network pod must. On the loopback,
// which never goes down (an interface coming up would put the local
// route back). The answers to those connections come from the node IP,
// an address of the VM's own, which IPv4 drops as a martian source
// unless accept_local is on. Busybox's ip and sysctl do this; the container is privileged and in
// the VM's network namespace.
func (s *Supervisor) nodeIPScript() string {
	ip, err := netip.ParseAddr(s.cfg.NodeIP)
	if err != nil {
		return ""
	}
	script := fmt.Sprintf(" && ip addr add %s dev lo && ip route del local %s dev lo table local",
		netip.PrefixFrom(ip, ip.BitLen()), ip)
	if ip.Is4() {
		script += " && sysctl -w net.ipv4.conf.all.accept_local=1"
	}
	return script
}

// hasFlag reports whether kubelet's args set --name (or -name), with
// its value joined by "=" or next.
func hasFlag(args []string, name string) bool {
	for _, a := range args {
		if !strings.HasPrefix(a, "-") {
			continue
		}
		if n, _, _ := strings.Cut(strings.TrimLeft(a, "-"), "="); n == name {
			return true
		}
	}
	return false
}

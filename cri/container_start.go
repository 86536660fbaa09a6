package cri

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"github.com/containerd/errdefs"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/macvz/macvz/internal/testpause"
	"github.com/macvz/macvz/runtime/agentapi"
	"github.com/macvz/macvz/runtime/sandbox"
	"github.com/macvz/macvz/runtime/shim"
	"github.com/macvz/macvz/runtime/shimapi"
	"github.com/macvz/macvz/runtime/store"
	"github.com/macvz/macvz/vmimage/imagestore"
)

// StartContainer starts a created container. The sandbox's first started
// container boots the VM. A VM container (a VM image without a command)
// is the VM itself and is running once the VM is; any other container is
// a process the guest agent runs, its output copied to the log path by
// the shim.
func (s *Service) StartContainer(ctx context.Context, r *runtimeapi.StartContainerRequest) (_ *runtimeapi.StartContainerResponse, retErr error) {
	c, err := s.container(ctx, r.GetContainerId())
	if err != nil {
		return nil, err
	}
	unlock := s.ctl.Lock(c.SandboxID)
	defer unlock()
	if c, err = s.container(ctx, c.ID); err != nil {
		return nil, err
	}
	if c.State != store.ContainerCreated {
		return nil, fmt.Errorf("container %s is %s; only a created container can start: %w", c.ID, c.State, errdefs.ErrFailedPrecondition)
	}
	sb, err := s.sandbox(ctx, c.SandboxID)
	if err != nil {
		return nil, err
	}
	sb = s.ctl.Refresh(ctx, sb)
	if sb.State != store.SandboxReady {
		return nil, fmt.Errorf("sandbox %s is not ready (%s): %w", sb.ID, orDefault(sb.Reason, "stopped"), errdefs.ErrFailedPrecondition)
	}
	if err := checkLogPath(sb, c); err != nil {
		return nil, err
	}
	log := ctrLog(c)
	// A start that fails leaves the container Exited with the reason, as
	// containerd does, so kubelet sees why and recreates it.
	defer func() {
		if retErr != nil {
			log.Warn("container start failed", "err", retErr)
			s.ctl.SetExited(c.ID, &sandbox.Exit{Code: 128, Reason: "StartError", Message: retErr.Error(), At: time.Now()})
		}
	}()
	cfg, err := ctrConfig(c)
	if err != nil {
		return nil, err
	}
	img, err := s.images.VMImage(ctx, c.ImageID)
	if err != nil {
		return nil, err
	}
	if !sb.VMStarted {
		ctrs, err := s.containerResources(sb.ID)
		if err != nil {
			return nil, err
		}
		if err := s.ctl.Boot(ctx, &sb, &img, ctrs); err != nil {
			return nil, err
		}
	}
	testpause.Pause(ctx, "start") // test-only hook, inert unless MACVZ_TEST_PAUSE=start
	started := time.Now()
	if !c.IsVM {
		sc, err := s.ctl.Shim(ctx, sb)
		if err != nil {
			return nil, err
		}
		if c.Restored {
			err = s.continueProcess(ctx, sc, c)
		} else {
			started, err = s.startProcess(ctx, sb, sc, c, cfg, &img)
		}
		if err != nil {
			return nil, err
		}
	}
	_, err = s.st.UpdateContainer(c.ID, func(r *store.Container) error {
		r.State = store.ContainerRunning
		r.StartedAt = started
		r.Restored = false
		return nil
	})
	if err != nil {
		return nil, err
	}
	log.Info("container started", "vm", c.IsVM)
	s.containerEvent(runtimeapi.ContainerEventType_CONTAINER_STARTED_EVENT, c.SandboxID, c.ID)
	return &runtimeapi.StartContainerResponse{}, nil
}

// containerResources are the resources of a sandbox's containers, which
// size its VM when the pod's do not.
func (s *Service) containerResources(id string) ([]store.Resources, error) {
	cs, err := s.st.Containers(func(c *store.Container) bool { return c.SandboxID == id })
	if err != nil {
		return nil, err
	}
	var out []store.Resources
	for _, c := range cs {
		cfg, err := ctrConfig(c)
		if err != nil {
			return nil, err
		}
		out = append(out, resourcesOf(cfg.GetLinux().GetResources()))
	}
	return out, nil
}

// startProcess binds the container's volumes into the guest, then
// has the shim create, watch and start its process. It returns when the
// process was started (host time, taken just before, so a process that exits at
// once never finishes before it started).
func (s *Service) startProcess(ctx context.Context, sb store.Sandbox, sc shim.Conn, c store.Container, cfg *runtimeapi.ContainerConfig, img *imagestore.VMImage) (time.Time, error) {
	argv, env, cwd, user := processOf(img.Descriptor.Process, cfg)
	if len(argv) == 0 {
		return time.Time{}, fmt.Errorf("container %s has no command and its image no default process: %w", c.ID, errdefs.ErrInvalidArgument)
	}
	pu, err := userOf(cfg.GetLinux().GetSecurityContext(), user)
	if err != nil {
		return time.Time{}, err
	}
	env = completeEnv(env, store.SpecOf(sb).Hostname)
	if err := s.ctl.BindVolumes(ctx, sb, sc.Agent(), c.ID, volumesOf(cfg.GetMounts())); err != nil {
		return time.Time{}, err
	}
	id := &agentapi.ProcessID{ContainerId: c.ID}
	creq := &agentapi.CreateProcessRequest{
		Id: id, Argv: argv, Env: env, Cwd: cwd,
		Tty: cfg.GetTty(), Stdin: cfg.GetStdin(),
	}
	if sc := cfg.GetLinux().GetSecurityContext(); img.Descriptor.OS == "linux" && (sc.GetReadonlyRootfs() || len(sc.GetReadonlyPaths()) > 0) {
		// A view of the VM's root of its own; its execs join it.
		creq.OwnMountNamespace, creq.ReadOnlyRootfs, creq.ReadonlyPaths = true, sc.GetReadonlyRootfs(), sc.GetReadonlyPaths()
	}
	if img.Descriptor.OS == "linux" {
		if err := applyIsolation(creq, cfg); err != nil {
			return time.Time{}, err
		}
	}
	pu.forOS(img.Descriptor.OS).apply(creq)
	if c.LogPath != "" {
		// kubelet makes the pod's log directory; crictl users may not.
		if err := os.MkdirAll(filepath.Dir(c.LogPath), 0o755); err != nil {
			return time.Time{}, err
		}
	}
	// The shim creates, watches and starts the process, and removes it
	// again when a step fails.
	started, err := sc.StartProcess(ctx, creq, c.LogPath)
	if err != nil {
		return time.Time{}, fmt.Errorf("starting the container's process: %w", err)
	}
	return started, nil
}

// volumesOf are a container's CRI mounts as the controller's volumes.
func volumesOf(ms []*runtimeapi.Mount) []sandbox.Volume {
	var out []sandbox.Volume
	for _, m := range ms {
		out = append(out, sandbox.Volume{HostPath: m.GetHostPath(), GuestPath: m.GetContainerPath(), ReadOnly: m.GetReadonly(), Image: m.GetImage().GetImage() != ""})
	}
	return out
}

// continueProcess starts a restored container (RestorePod): its process
// is in the VM's state, stopped since the checkpoint. The shim watches it
// (output into the log from where the guest's buffer has it, the exit),
// then its processes continue.
func (s *Service) continueProcess(ctx context.Context, sc shim.Conn, c store.Container) error {
	if c.LogPath != "" {
		if err := os.MkdirAll(filepath.Dir(c.LogPath), 0o755); err != nil {
			return err
		}
	}
	if _, err := sc.Shim().WatchProcess(ctx, &shimapi.WatchProcessRequest{ContainerId: c.ID, LogPath: c.LogPath}); err != nil {
		return fmt.Errorf("watching the restored container's process: %w", err)
	}
	if _, err := sc.Agent().KillAll(ctx, &agentapi.KillAllRequest{ContainerId: c.ID, Signal: uint32(syscall.SIGCONT)}); err != nil {
		return fmt.Errorf("continuing the restored container's processes: %w", err)
	}
	return nil
}

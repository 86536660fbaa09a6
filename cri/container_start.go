package cri

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/containerd/errdefs"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/macvz/macvz/runtime/agentapi"
	"github.com/macvz/macvz/runtime/shim"
	"github.com/macvz/macvz/runtime/shimapi"
	"github.com/macvz/macvz/runtime/store"
)

// defaultPath is PATH when neither the image nor the container sets one
// (containerd's default).
const defaultPath = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// StartContainer starts a created container. The sandbox's first started
// container boots the VM. A VM container (a VM image without a command)
// is the VM itself and is running once the VM is; any other container is
// a process the guest agent runs, its output copied to the log path by
// the shim.
func (s *Service) StartContainer(ctx context.Context, r *runtimeapi.StartContainerRequest) (_ *runtimeapi.StartContainerResponse, retErr error) {
	c, err := s.st.Container(r.GetContainerId())
	if err != nil {
		return nil, err
	}
	unlock := s.locks.lock(c.SandboxID)
	defer unlock()
	if c, err = s.st.Container(c.ID); err != nil {
		return nil, err
	}
	if c.State != store.ContainerCreated {
		return nil, fmt.Errorf("container %s is %s; only a created container can start: %w", c.ID, c.State, errdefs.ErrFailedPrecondition)
	}
	sb, err := s.st.Sandbox(c.SandboxID)
	if err != nil {
		return nil, err
	}
	sb = s.refreshSandbox(ctx, sb)
	if sb.State != store.SandboxReady {
		return nil, fmt.Errorf("sandbox %s is not ready (%s): %w", sb.ID, orDefault(sb.Reason, "stopped"), errdefs.ErrFailedPrecondition)
	}
	log := ctrLog(c)
	// A start that fails leaves the container Exited with the reason, as
	// containerd does, so kubelet sees why and recreates it.
	defer func() {
		if retErr != nil {
			log.Warn("container start failed", "err", retErr)
			s.setExited(c.ID, &exit{code: 128, reason: "StartError", message: retErr.Error(), at: time.Now()})
		}
	}()
	pod, err := podConfig(sb)
	if err != nil {
		return nil, err
	}
	cfg, err := ctrConfig(c)
	if err != nil {
		return nil, err
	}
	img, err := s.vmImage(ctx, c.ImageID)
	if err != nil {
		return nil, err
	}
	if !sb.VMStarted {
		ctrs, err := s.sandboxContainerConfigs(sb.ID)
		if err != nil {
			return nil, err
		}
		if err := s.bootVM(ctx, &sb, pod, img, ctrs); err != nil {
			return nil, err
		}
	}
	started := time.Now()
	if !c.IsVM {
		sc, err := s.shimFor(ctx, sb)
		if err != nil {
			return nil, err
		}
		if started, err = s.startProcess(ctx, sb, sc, c, pod, cfg, img); err != nil {
			return nil, err
		}
	}
	_, err = s.st.UpdateContainer(c.ID, func(r *store.Container) error {
		r.State = store.ContainerRunning
		r.StartedAt = started
		return nil
	})
	if err != nil {
		return nil, err
	}
	log.Info("container started", "vm", c.IsVM)
	return &runtimeapi.StartContainerResponse{}, nil
}

// sandboxContainerConfigs are the configs of a sandbox's containers.
func (s *Service) sandboxContainerConfigs(id string) ([]*runtimeapi.ContainerConfig, error) {
	cs, err := s.st.Containers(func(c *store.Container) bool { return c.SandboxID == id })
	if err != nil {
		return nil, err
	}
	var out []*runtimeapi.ContainerConfig
	for _, c := range cs {
		cfg, err := ctrConfig(c)
		if err != nil {
			return nil, err
		}
		out = append(out, cfg)
	}
	return out, nil
}

// startProcess binds the container's volumes into the guest, then
// creates, watches and starts its process. It returns when the process
// was started (host time, taken just before, so a process that exits at
// once never finishes before it started).
func (s *Service) startProcess(ctx context.Context, sb store.Sandbox, sc *shim.Client, c store.Container, pod *runtimeapi.PodSandboxConfig, cfg *runtimeapi.ContainerConfig, img *imageRef) (_ time.Time, retErr error) {
	argv, env, cwd, user := processOf(img.desc.Process, cfg)
	if len(argv) == 0 {
		return time.Time{}, fmt.Errorf("container %s has no command and its image no default process: %w", c.ID, errdefs.ErrInvalidArgument)
	}
	uid, gid, groups, err := userOf(cfg.GetLinux().GetSecurityContext(), user)
	if err != nil {
		return time.Time{}, err
	}
	env = completeEnv(env, podHostname(pod))
	if err := s.mountVolumes(ctx, sb, sc.Agent(), c.ID, cfg.GetMounts()); err != nil {
		return time.Time{}, err
	}
	id := &agentapi.ProcessID{ContainerId: c.ID}
	_, err = sc.Agent().CreateProcess(ctx, &agentapi.CreateProcessRequest{
		Id: id, Argv: argv, Env: env, Cwd: cwd,
		Uid: uid, Gid: gid, AdditionalGids: groups,
		Tty: cfg.GetTty(), Stdin: cfg.GetStdin(),
	})
	if err != nil {
		return time.Time{}, fmt.Errorf("creating the container's process in the guest: %w", err)
	}
	defer func() {
		if retErr != nil {
			cctx := context.WithoutCancel(ctx)
			sc.Shim().ForgetProcess(cctx, &shimapi.ForgetProcessRequest{ContainerId: c.ID})
			sc.Agent().RemoveProcess(cctx, &agentapi.RemoveProcessRequest{Id: id})
		}
	}()
	if c.LogPath != "" {
		// kubelet makes the pod's log directory; crictl users may not.
		if err := os.MkdirAll(filepath.Dir(c.LogPath), 0o755); err != nil {
			return time.Time{}, err
		}
	}
	if _, err := sc.Shim().WatchProcess(ctx, &shimapi.WatchProcessRequest{ContainerId: c.ID, LogPath: c.LogPath}); err != nil {
		return time.Time{}, fmt.Errorf("watching the container's process: %w", err)
	}
	started := time.Now()
	if _, err := sc.Agent().StartProcess(ctx, &agentapi.StartProcessRequest{Id: id}); err != nil {
		return time.Time{}, fmt.Errorf("starting the container's process in the guest: %w", err)
	}
	return started, nil
}

// mountVolumes makes each mount visible in the guest at its container
// path: a bind of the host path under the sandbox's shared directory
// (host side), then a bind of that in the guest.
func (s *Service) mountVolumes(ctx context.Context, sb store.Sandbox, a agentapi.AgentClient, cid string, ms []*runtimeapi.Mount) error {
	for i, m := range ms {
		sub := filepath.Join(cid, strconv.Itoa(i))
		host := filepath.Join(sb.Dir, sharedDir, sub)
		if err := bindVolume(m.GetHostPath(), host, m.GetReadonly()); err != nil {
			return fmt.Errorf("volume %s → %s: %w", m.GetHostPath(), m.GetContainerPath(), err)
		}
		_, err := a.MountShare(ctx, &agentapi.MountShareRequest{
			Tag: sharedTag, Subpath: sub, Target: m.GetContainerPath(),
			ReadOnly: m.GetReadonly(), CreateTarget: true,
		})
		if err != nil {
			return fmt.Errorf("volume %s → %s in the guest: %w", m.GetHostPath(), m.GetContainerPath(), err)
		}
	}
	return nil
}

// completeEnv adds what containerd adds when missing: PATH and HOSTNAME.
func completeEnv(env []string, hostname string) []string {
	has := func(k string) bool {
		for _, e := range env {
			if strings.HasPrefix(e, k+"=") {
				return true
			}
		}
		return false
	}
	if !has("PATH") {
		env = append(env, defaultPath)
	}
	if !has("HOSTNAME") && hostname != "" {
		env = append(env, "HOSTNAME="+hostname)
	}
	return env
}

// userOf is the uid, gid and supplementary groups a process runs as: the
// security context's, else the image's user ("uid", "uid:gid", "root").
// User names other than root cannot be resolved on the host.
func userOf(sc *runtimeapi.LinuxContainerSecurityContext, imageUser string) (uid, gid uint32, groups []uint32, err error) {
	if sc.GetRunAsUsername() != "" && sc.GetRunAsUsername() != "root" {
		return 0, 0, nil, fmt.Errorf("run_as_username %q: macvz runs processes by numeric uid; set run_as_user: %w", sc.GetRunAsUsername(), errdefs.ErrInvalidArgument)
	}
	if imageUser != "" {
		u, g, hasG := strings.Cut(imageUser, ":")
		if uid, err = parseID(u); err != nil {
			return 0, 0, nil, fmt.Errorf("image user %q: %w", imageUser, err)
		}
		if hasG {
			if gid, err = parseID(g); err != nil {
				return 0, 0, nil, fmt.Errorf("image user %q: %w", imageUser, err)
			}
		}
	}
	if u := sc.GetRunAsUser(); u != nil {
		uid = uint32(u.GetValue())
	}
	if g := sc.GetRunAsGroup(); g != nil {
		gid = uint32(g.GetValue())
	}
	for _, g := range sc.GetSupplementalGroups() {
		groups = append(groups, uint32(g))
	}
	return uid, gid, groups, nil
}

func parseID(s string) (uint32, error) {
	if s == "root" {
		return 0, nil
	}
	n, err := strconv.ParseUint(s, 10, 32)
	if err != nil {
		return 0, fmt.Errorf("%q is not a numeric id (names other than root are not resolved): %w", s, errdefs.ErrInvalidArgument)
	}
	return uint32(n), nil
}

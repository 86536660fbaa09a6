package cri

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"time"

	"github.com/containerd/errdefs"
	"google.golang.org/protobuf/proto"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/macvz/macvz/cri/config"
	"github.com/macvz/macvz/internal/testpause"
	"github.com/macvz/macvz/runtime/store"
)

// CreateContainer records a container in a sandbox. Its image must be a
// pulled VM image; the first one decides the sandbox's VM, and a second,
// different VM image in the same pod is refused. Nothing runs yet.
func (s *Service) CreateContainer(ctx context.Context, r *runtimeapi.CreateContainerRequest) (*runtimeapi.CreateContainerResponse, error) {
	cfg := r.GetConfig()
	if cfg.GetMetadata().GetName() == "" {
		return nil, fmt.Errorf("container config lacks metadata.name: %w", errdefs.ErrInvalidArgument)
	}
	if cfg.GetImage().GetImage() == "" {
		return nil, fmt.Errorf("container %q has no image: %w", cfg.GetMetadata().GetName(), errdefs.ErrInvalidArgument)
	}
	volImages, err := s.resolveImageVolumes(ctx, cfg)
	if err != nil {
		return nil, err
	}
	if err := validateMounts(cfg.GetMounts()); err != nil {
		return nil, err
	}
	if err := validateResources(cfg.GetLinux().GetResources()); err != nil {
		return nil, err
	}
	if sc := cfg.GetLinux().GetSecurityContext(); sc.GetRunAsGroup() != nil && sc.GetRunAsUser() == nil && sc.GetRunAsUsername() == "" {
		return nil, fmt.Errorf("container %q sets run_as_group without run_as_user or run_as_username: %w", cfg.GetMetadata().GetName(), errdefs.ErrInvalidArgument)
	}
	unlock := s.ctl.Lock(r.GetPodSandboxId())
	defer unlock()
	sb, err := s.sandbox(ctx, r.GetPodSandboxId())
	if err != nil {
		return nil, err
	}
	if sb.State != store.SandboxReady {
		return nil, fmt.Errorf("sandbox %s is not ready (%s): %w", sb.ID, orDefault(sb.Reason, "stopped"), errdefs.ErrFailedPrecondition)
	}
	pod, err := podConfig(sb)
	if err != nil {
		return nil, err
	}
	logPath, err := containerLogPath(pod.GetLogDirectory(), cfg.GetLogPath())
	if err != nil {
		return nil, err
	}
	img, err := s.images.VMImage(ctx, cfg.GetImage().GetImage())
	if err != nil {
		return nil, err
	}
	if sb.VMImage != "" && sb.VMContent != img.Content {
		return nil, fmt.Errorf("sandbox %s already runs VM image %s; a pod is one VM, so its containers must share one VM image (got %s, which boots a different VM): %w",
			sb.ID, sb.VMImage, cfg.GetImage().GetImage(), errdefs.ErrFailedPrecondition)
	}
	switch img.Descriptor.OS {
	case "linux":
		// A Localhost profile that cannot be read or parsed fails here,
		// before anything is created.
		if _, _, err := seccompProfile(cfg.GetLinux().GetSecurityContext()); err != nil {
			return nil, err
		}
	case "darwin":
		if err := checkMacOSIsolation(cfg, sb, img.Descriptor.MinMemoryBytes); err != nil {
			return nil, err
		}
	}
	raw, err := proto.Marshal(cfg)
	if err != nil {
		return nil, err
	}
	c := &store.Container{
		ID:        store.NewID(),
		SandboxID: sb.ID,
		Name:      containerName(cfg.GetMetadata(), pod.GetMetadata()),
		Config:    raw,
		ImageRef:  cfg.GetImage().GetImage(),
		ImageID:   img.Image.ID(),
		IsVM:      len(cfg.GetCommand()) == 0 && len(cfg.GetArgs()) == 0 && img.Descriptor.Process == nil,
		State:     store.ContainerCreated,
		CreatedAt: time.Now(),
		LogPath:   logPath,
		Node:      sb.Node,

		VolumeImages: volImages,
	}
	if !c.IsVM && store.SpecOf(sb).NoAgent {
		return nil, fmt.Errorf("container %q has a command, and sandbox %s's VM runs without the macvz guest agent (%s: %s, or its runtime handler's agent = %q): only the VM itself (no command, no args) runs there; put the agent into the VM image with `macvz image install-agent`: %w",
			cfg.GetMetadata().GetName(), sb.ID, annotationAgent, config.AgentNone, config.AgentNone, errdefs.ErrFailedPrecondition)
	}
	if err := s.st.CreateContainer(c); err != nil {
		return nil, err
	}
	testpause.Pause(ctx, "create") // test-only hook, inert unless MACVZ_TEST_PAUSE=create
	if sb.VMImage == "" {
		if _, err := s.st.UpdateSandbox(sb.ID, func(sb *store.Sandbox) error { sb.VMImage, sb.VMContent = img.Image.ID(), img.Content; return nil }); err != nil {
			s.st.DeleteContainer(*c)
			return nil, err
		}
	}
	ctrLog(*c).Info("container created", "name", c.Name, "image", c.ImageRef, "vm", c.IsVM)
	s.containerEvent(runtimeapi.ContainerEventType_CONTAINER_CREATED_EVENT, c.SandboxID, c.ID)
	return &runtimeapi.CreateContainerResponse{ContainerId: c.ID}, nil
}

// containerLogPath is where a container's log goes: its log_path, which
// must be relative, under the sandbox's log_directory, which must be
// absolute, and still inside that directory once cleaned. The shim opens
// the file as root, so a path leaving the directory ("../../etc/cron.d/x")
// is refused. No log_path, no log.
func containerLogPath(logDir, logPath string) (string, error) {
	if logPath == "" {
		return "", nil
	}
	if !filepath.IsAbs(logDir) {
		return "", fmt.Errorf("container log_path %q needs the sandbox's log_directory to be an absolute path, got %q: %w", logPath, logDir, errdefs.ErrInvalidArgument)
	}
	if filepath.IsAbs(logPath) {
		return "", fmt.Errorf("container log_path %q must be relative to the sandbox's log_directory %q: %w", logPath, logDir, errdefs.ErrInvalidArgument)
	}
	dir := filepath.Clean(logDir)
	p := filepath.Join(dir, logPath)
	rel, err := filepath.Rel(dir, p)
	if err != nil || rel == "." || rel == ".." || strings.HasPrefix(rel, ".."+string(filepath.Separator)) {
		return "", fmt.Errorf("container log_path %q leaves the sandbox's log_directory %q: %w", logPath, logDir, errdefs.ErrInvalidArgument)
	}
	return p, nil
}

// checkLogPath verifies a recorded container's log path against its
// configuration before the shim opens it (records made by older versions
// were not checked at creation).
func checkLogPath(sb store.Sandbox, c store.Container) error {
	if c.LogPath == "" {
		return nil
	}
	pod, err := podConfig(sb)
	if err != nil {
		return err
	}
	cfg, err := ctrConfig(c)
	if err != nil {
		return err
	}
	want, err := containerLogPath(pod.GetLogDirectory(), cfg.GetLogPath())
	if err != nil {
		return err
	}
	if want != c.LogPath {
		return fmt.Errorf("container %s: recorded log path %q is not its log_path %q under log_directory %q: %w", c.ID, c.LogPath, cfg.GetLogPath(), pod.GetLogDirectory(), errdefs.ErrInvalidArgument)
	}
	return nil
}

// validateMounts checks volume mounts before anything is created: both
// paths absolute, the host path present (kubelet creates the directories
// it hands over).
func validateMounts(ms []*runtimeapi.Mount) error {
	for _, m := range ms {
		if !filepath.IsAbs(m.GetContainerPath()) {
			return fmt.Errorf("mount container_path %q is not absolute: %w", m.GetContainerPath(), errdefs.ErrInvalidArgument)
		}
		if !filepath.IsAbs(m.GetHostPath()) {
			return fmt.Errorf("mount host_path %q is not absolute: %w", m.GetHostPath(), errdefs.ErrInvalidArgument)
		}
		if _, err := filepath.EvalSymlinks(m.GetHostPath()); err != nil {
			return fmt.Errorf("mount host_path %q: %v: %w", m.GetHostPath(), err, errdefs.ErrNotFound)
		}
	}
	return nil
}

func orDefault(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

package cri

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/containerd/errdefs"
	"google.golang.org/protobuf/proto"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/macvz/macvz/cri/config"
	"github.com/macvz/macvz/runtime/store"
)

// RunPodSandbox records a sandbox and prepares its state directory. The
// VM boots with the first VM-image container (StartContainer), or here
// when the runtime handler or the pod's macvz.io/vm-image annotation
// names the image. Anything made before a failure is undone.
func (s *Service) RunPodSandbox(ctx context.Context, r *runtimeapi.RunPodSandboxRequest) (_ *runtimeapi.RunPodSandboxResponse, retErr error) {
	cfg := r.GetConfig()
	if err := validateSandboxConfig(cfg); err != nil {
		return nil, err
	}
	if err := validateResources(cfg.GetLinux().GetResources()); err != nil {
		return nil, err
	}
	vmImage, err := s.handlerImage(r.GetRuntimeHandler(), cfg)
	if err != nil {
		return nil, err
	}
	var img *imageRef
	if vmImage != "" {
		if img, err = s.vmImage(ctx, vmImage); err != nil {
			return nil, err
		}
	}
	raw, err := proto.Marshal(cfg)
	if err != nil {
		return nil, err
	}
	id := store.NewID()
	sb := &store.Sandbox{
		ID:        id,
		Name:      sandboxName(cfg.GetMetadata()),
		Config:    raw,
		Handler:   r.GetRuntimeHandler(),
		State:     store.SandboxReady,
		Creating:  true,
		CreatedAt: time.Now(),
		Dir:       filepath.Join(s.cfg.State, "sandboxes", id),
	}
	log := sbLog(id)
	unlock := s.locks.lock(id)
	defer unlock()
	if err := s.st.CreateSandbox(sb); err != nil {
		return nil, err
	}
	defer func() {
		if retErr != nil {
			log.Warn("RunPodSandbox failed; undoing", "err", retErr)
			s.destroySandbox(context.WithoutCancel(ctx), *sb)
		}
	}()
	if err := os.MkdirAll(sb.Dir, 0o700); err != nil {
		return nil, err
	}
	if err := s.setupNetwork(ctx, sb, cfg); err != nil {
		return nil, err
	}
	testPause(ctx, "runp") // test-only hook, inert unless MACVZ_TEST_PAUSE=runp
	if img != nil {
		if err := s.bootVM(ctx, sb, cfg, img, nil); err != nil {
			return nil, err
		}
	}
	if _, err := s.st.UpdateSandbox(id, func(r *store.Sandbox) error { r.Creating = false; return nil }); err != nil {
		return nil, err
	}
	log.Info("sandbox created", "name", sb.Name, "vmImage", vmImage, "ips", sb.IPs)
	return &runtimeapi.RunPodSandboxResponse{PodSandboxId: id}, nil
}

// handlerImage is the VM image a sandbox boots at creation, if any: the
// pod's macvz.io/vm-image annotation where its handler allows it, else
// the handler's vm_image.
func (s *Service) handlerImage(handler string, cfg *runtimeapi.PodSandboxConfig) (string, error) {
	name := handler
	if name == "" {
		name = config.DefaultHandler
	}
	h, ok := s.cfg.RuntimeHandlers[name]
	if !ok && name != config.DefaultHandler {
		known := []string{config.DefaultHandler}
		for k := range s.cfg.RuntimeHandlers {
			if k != config.DefaultHandler {
				known = append(known, k)
			}
		}
		sort.Strings(known)
		return "", fmt.Errorf("runtime handler %q is not configured (configured: %s): %w", handler, strings.Join(known, ", "), errdefs.ErrNotFound)
	}
	img := h.VMImage
	if a := cfg.GetAnnotations()[annotationVMImage]; a != "" {
		// The image would boot as found on the node, past the kubelet's
		// image admission: only where the operator said so.
		if !h.AllowVMImageAnnotation {
			return "", fmt.Errorf("pod annotation %s=%q is not allowed for runtime handler %q: it boots a local image without the kubelet's image checks; set allow_vm_image_annotation = true under [runtime_handlers.%s] in the daemon configuration to allow it: %w",
				annotationVMImage, a, name, name, errdefs.ErrFailedPrecondition)
		}
		img = a
	}
	return img, nil
}

package cri

import (
	"context"
	"fmt"
	"sort"
	"strings"

	"github.com/containerd/errdefs"
	"google.golang.org/protobuf/proto"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/macvz/macvz/cri/config"
	"github.com/macvz/macvz/runtime/nodevm"
	"github.com/macvz/macvz/runtime/store"
	"github.com/macvz/macvz/vmimage/imagestore"
)

// RunPodSandbox records a sandbox and attaches its network. The VM boots with the first VM-image container (StartContainer), or here
// when the runtime handler or the pod's macvz.io/vm-image annotation
// names the image. Anything made before a failure is undone.
func (s *Service) RunPodSandbox(ctx context.Context, r *runtimeapi.RunPodSandboxRequest) (*runtimeapi.RunPodSandboxResponse, error) {
	cfg := r.GetConfig()
	if err := validateSandboxConfig(cfg); err != nil {
		return nil, err
	}
	if err := validateResources(cfg.GetLinux().GetResources()); err != nil {
		return nil, err
	}
	node := nodevm.IsNode(cfg.GetLabels())
	if node && !nodevm.Internal(ctx) {
		return nil, fmt.Errorf("the label %s is the daemon's own, for its node VM: %w", nodevm.Label, errdefs.ErrInvalidArgument)
	}
	if node {
		if _, err := nodevm.DecodeShares(cfg.GetAnnotations()[nodevm.SharesAnnotation]); err != nil {
			return nil, fmt.Errorf("the node VM's shares: %v: %w", err, errdefs.ErrInvalidArgument)
		}
	}
	h, err := s.handler(r.GetRuntimeHandler())
	if err != nil {
		return nil, err
	}
	vmImage, err := handlerImage(h, cfg)
	if err != nil {
		return nil, err
	}
	noAgent, err := agentless(h.RuntimeHandler, cfg)
	if err != nil {
		return nil, err
	}
	if noAgent && node {
		return nil, fmt.Errorf("the node VM needs its agent: %w", errdefs.ErrInvalidArgument)
	}
	var img *imagestore.VMImage
	if vmImage != "" {
		vi, err := s.images.VMImage(ctx, vmImage)
		if err != nil {
			return nil, err
		}
		img = &vi
	}
	if err := s.checkVolumeDirs(r.GetRuntimeHandler(), cfg); err != nil {
		return nil, err
	}
	raw, err := proto.Marshal(cfg)
	if err != nil {
		return nil, err
	}
	spec := sandboxSpec(cfg)
	spec.NoAgent = noAgent
	sb, err := s.ctl.Create(ctx, store.Sandbox{
		ID:      store.NewID(),
		Name:    sandboxName(cfg.GetMetadata()),
		Config:  raw,
		Spec:    spec,
		Handler: r.GetRuntimeHandler(),
		Node:    node,
	}, img)
	if err != nil {
		return nil, err
	}
	sbLog(sb.ID).Info("sandbox created", "name", sb.Name, "vmImage", vmImage, "ips", sb.IPs)
	// Created and started at once, as containerd reports a sandbox.
	s.containerEvent(runtimeapi.ContainerEventType_CONTAINER_CREATED_EVENT, sb.ID, sb.ID)
	s.containerEvent(runtimeapi.ContainerEventType_CONTAINER_STARTED_EVENT, sb.ID, sb.ID)
	return &runtimeapi.RunPodSandboxResponse{PodSandboxId: sb.ID}, nil
}

// namedHandler is a runtime handler's configuration and its name.
type namedHandler struct {
	config.RuntimeHandler
	name string
}

// handler is the configuration of a sandbox's runtime handler ("" is
// the default one).
func (s *Service) handler(handler string) (namedHandler, error) {
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
		return namedHandler{}, fmt.Errorf("runtime handler %q is not configured (configured: %s): %w", handler, strings.Join(known, ", "), errdefs.ErrNotFound)
	}
	return namedHandler{h, name}, nil
}

// handlerImage is the VM image a sandbox boots at creation, if any: the
// pod's macvz.io/vm-image annotation where its handler allows it, else
// the handler's vm_image.
func handlerImage(h namedHandler, cfg *runtimeapi.PodSandboxConfig) (string, error) {
	name := h.name
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

package cri

import (
	"context"
	"encoding/json"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/macvz/macvz/runtime/store"
)

// PodSandboxStatus reports a sandbox; NotFound for an unknown ID.
func (s *Service) PodSandboxStatus(ctx context.Context, r *runtimeapi.PodSandboxStatusRequest) (*runtimeapi.PodSandboxStatusResponse, error) {
	sb, err := s.sandbox(ctx, r.GetPodSandboxId())
	if err != nil {
		return nil, err
	}
	sb = s.ctl.PodIPs(ctx, s.ctl.Refresh(ctx, sb))
	st, err := sandboxStatus(sb)
	if err != nil {
		return nil, err
	}
	resp := &runtimeapi.PodSandboxStatusResponse{Status: st}
	if r.GetVerbose() {
		info, err := json.Marshal(sandboxInfo(sb))
		if err != nil {
			return nil, err
		}
		resp.Info = map[string]string{"info": string(info)}
	}
	ctrs, err := s.containerStatuses(sb.ID, func(c store.Container) store.Container { return s.ctl.RefreshContainer(ctx, c) })
	if err != nil {
		return nil, err
	}
	resp.ContainersStatuses = ctrs
	// Timestamp stays 0. kubelet v1.37 with EventedPLEG on takes a
	// non-zero one as "this runtime's sandbox status is the pod status":
	// it then uses ContainersStatuses for the pod and leaves its active
	// container statuses empty, so it finds no init container and creates
	// it again (AlreadyExists, for ever). At 0 it asks ContainerStatus
	// for each container, as with the gate off; the events it still gets
	// (container_events.go) trigger its relists, which is all that
	// EventedPLEG does in v1.37.
	return resp, nil
}

// sandboxStatus is a sandbox record's CRI status, as PodSandboxStatus
// and the container events (container_events.go) report it.
func sandboxStatus(sb store.Sandbox) (*runtimeapi.PodSandboxStatus, error) {
	cfg, err := podConfig(sb)
	if err != nil {
		return nil, err
	}
	return &runtimeapi.PodSandboxStatus{
		Id:             sb.ID,
		Metadata:       cfg.GetMetadata(),
		State:          criSandboxState(sb.State),
		CreatedAt:      sb.CreatedAt.UnixNano(),
		Labels:         cfg.GetLabels(),
		Annotations:    cfg.GetAnnotations(),
		RuntimeHandler: sb.Handler,
		Network:        networkStatusOf(sb),
		Linux: &runtimeapi.LinuxPodSandboxStatus{Namespaces: &runtimeapi.Namespace{
			Options: cfg.GetLinux().GetSecurityContext().GetNamespaceOptions(),
		}},
	}, nil
}

// containerStatuses are the statuses of a sandbox's containers, each
// record passed through refresh first when it is set; a container whose
// stored config does not decode is left out.
func (s *Service) containerStatuses(sbID string, refresh func(store.Container) store.Container) ([]*runtimeapi.ContainerStatus, error) {
	cs, err := s.st.Containers(func(c *store.Container) bool { return c.SandboxID == sbID })
	if err != nil {
		return nil, err
	}
	var out []*runtimeapi.ContainerStatus
	for _, c := range cs {
		if refresh != nil {
			c = refresh(c)
		}
		if cst, err := s.containerStatus(c); err == nil {
			out = append(out, cst)
		}
	}
	return out, nil
}

// sandboxInfo is what `crictl inspectp` shows under info.
func sandboxInfo(sb store.Sandbox) map[string]any {
	return map[string]any{
		"id":        sb.ID,
		"name":      sb.Name,
		"stateDir":  sb.Dir,
		"vmImage":   sb.VMImage,
		"vmStarted": sb.VMStarted,
		"disk":      sb.Disk,
		"reason":    sb.Reason,
		"network":   sb.Network,
		// The size the VM booted with and the balloon's target (0: all).
		"vm": map[string]any{"cpus": sb.VMCPUs, "memoryBytes": sb.VMMemoryBytes, "memoryTargetBytes": sb.VMMemoryTarget},
	}
}

// networkStatusOf is the pod IP and the additional ones.
func networkStatusOf(sb store.Sandbox) *runtimeapi.PodSandboxNetworkStatus {
	st := &runtimeapi.PodSandboxNetworkStatus{}
	if len(sb.IPs) > 0 {
		st.Ip = sb.IPs[0]
		for _, ip := range sb.IPs[1:] {
			st.AdditionalIps = append(st.AdditionalIps, &runtimeapi.PodIP{Ip: ip})
		}
	}
	return st
}

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
	cfg, err := podConfig(sb)
	if err != nil {
		return nil, err
	}
	st := &runtimeapi.PodSandboxStatus{
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
	}
	resp := &runtimeapi.PodSandboxStatusResponse{Status: st}
	if r.GetVerbose() {
		info, err := json.Marshal(sandboxInfo(sb))
		if err != nil {
			return nil, err
		}
		resp.Info = map[string]string{"info": string(info)}
	}
	var ctrs []*runtimeapi.ContainerStatus
	cs, err := s.st.Containers(func(c *store.Container) bool { return c.SandboxID == sb.ID })
	if err != nil {
		return nil, err
	}
	for _, c := range cs {
		c = s.ctl.RefreshContainer(ctx, c)
		if cst, err := s.containerStatus(c); err == nil {
			ctrs = append(ctrs, cst)
		}
	}
	resp.ContainersStatuses = ctrs
	resp.Timestamp = nowNano()
	return resp, nil
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

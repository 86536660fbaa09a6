package cri

import (
	"context"
	"encoding/json"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// Status tells kubelet whether pods can run here. Each condition says the
// truth about this build: the runtime is ready as soon as the stores are
// open; networking is not ready until a net plugin is configured, and
// kubelet then keeps non-hostNetwork pods pending with our reason.
func (s *Service) Status(ctx context.Context, r *runtimeapi.StatusRequest) (*runtimeapi.StatusResponse, error) {
	resp := &runtimeapi.StatusResponse{
		Status: &runtimeapi.RuntimeStatus{Conditions: []*runtimeapi.RuntimeCondition{
			{Type: runtimeapi.RuntimeReady, Status: true},
			s.networkCondition(),
		}},
	}
	if r.GetVerbose() {
		cfg, err := json.Marshal(s.cfg)
		if err != nil {
			return nil, err
		}
		resp.Info = map[string]string{"config": string(cfg)}
	}
	return resp, nil
}

func (s *Service) networkCondition() *runtimeapi.RuntimeCondition {
	return &runtimeapi.RuntimeCondition{
		Type:    runtimeapi.NetworkReady,
		Status:  false,
		Reason:  "NetworkPluginNotReady",
		Message: "macvz: pod networking (the macvz-net CNI plugin) is not available in this build yet",
	}
}

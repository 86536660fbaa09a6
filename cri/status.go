package cri

import (
	"context"
	"encoding/json"
	goruntime "runtime"
	"strconv"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// Status tells kubelet whether pods can run here: the runtime is ready as
// soon as the stores are open; the network is ready when the CNI
// configuration loads and its plugins answer STATUS (kubelet keeps
// non-hostNetwork pods pending with our reason until then).
func (s *Service) Status(ctx context.Context, r *runtimeapi.StatusRequest) (*runtimeapi.StatusResponse, error) {
	resp := &runtimeapi.StatusResponse{
		Status: &runtimeapi.RuntimeStatus{Conditions: []*runtimeapi.RuntimeCondition{
			{Type: runtimeapi.RuntimeReady, Status: true},
			s.networkCondition(ctx),
			s.capacityCondition(),
		}},
	}
	if r.GetVerbose() {
		cfg, err := json.Marshal(s.cfg)
		if err != nil {
			return nil, err
		}
		// goroutines: the daemon's count, for leak checks
		// (integration/reliability_test.go); cheap to read.
		warm, err := json.Marshal(s.ctl.WarmStatus())
		if err != nil {
			return nil, err
		}
		resp.Info = map[string]string{"config": string(cfg), "goroutines": strconv.Itoa(goruntime.NumGoroutine()), "warmStart": string(warm)}
		if u := s.metricsURL.Load(); u != nil {
			// Where [metrics] serves, its free port picked.
			resp.Info["metrics"] = *u
		}
	}
	return resp, nil
}

func (s *Service) networkCondition(ctx context.Context) *runtimeapi.RuntimeCondition {
	if se := s.ctl.NetworkStatus(ctx); se != nil {
		return &runtimeapi.RuntimeCondition{Type: runtimeapi.NetworkReady, Status: false, Reason: se.Reason, Message: se.Message}
	}
	return &runtimeapi.RuntimeCondition{Type: runtimeapi.NetworkReady, Status: true, Message: s.ctl.NetworkSummary()}
}

// capacityCondition is the condition "VMCapacity": true while every
// bounded guest OS has a free VM slot; the message has the counts.
func (s *Service) capacityCondition() *runtimeapi.RuntimeCondition {
	c := s.ctl.Capacity()
	return &runtimeapi.RuntimeCondition{Type: "VMCapacity", Status: c.OK, Reason: c.Reason, Message: c.Message}
}

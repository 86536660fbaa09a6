package cri

import (
	"time"

	"google.golang.org/grpc"

	"github.com/macvz/macvz/cri/config"
	"github.com/macvz/macvz/cri/opmetrics"
	"github.com/macvz/macvz/runtime/sandbox"
	"github.com/macvz/macvz/runtime/shim"
)

// The operators' metrics (cri/opmetrics), when [metrics] address is set:
// made before the service so that the shims re-attached at start count,
// fed through the hooks below, served once the CRI socket is.

// newMetrics is the daemon's metrics, nil when [metrics] is off, and the
// shim launcher that times guest agent calls for them.
func newMetrics(cfg *config.Config) (*opmetrics.Metrics, shim.Processes) {
	if cfg.Metrics.Address == "" {
		return nil, shim.Processes{}
	}
	m := opmetrics.New(cfg.Backend, RuntimeVersion)
	return m, shim.Processes{AgentCalls: m.AgentCall}
}

// pullDone is the image store's PullDone hook: nil without metrics.
func (s *Service) pullDone() func(int64, time.Duration, error) {
	if s.metrics == nil {
		return nil
	}
	return s.metrics.PullDone
}

// withRecorder gives the controller's configuration the metrics as its
// Recorder (never a nil *Metrics in the interface).
func (s *Service) withRecorder(c sandbox.Config) sandbox.Config {
	if s.metrics != nil {
		c.Recorder = s.metrics
	}
	return c
}

// interceptors are the CRI server's: the metrics first, so that they see
// the codes unaryErrors and streamErrors give the errors, then those.
func (s *Service) interceptors() []grpc.ServerOption {
	unary := []grpc.UnaryServerInterceptor{unaryErrors}
	stream := []grpc.StreamServerInterceptor{streamErrors}
	if s.metrics != nil {
		unary = append([]grpc.UnaryServerInterceptor{s.metrics.UnaryServerInterceptor()}, unary...)
		stream = append([]grpc.StreamServerInterceptor{s.metrics.StreamServerInterceptor()}, stream...)
	}
	return []grpc.ServerOption{grpc.ChainUnaryInterceptor(unary...), grpc.ChainStreamInterceptor(stream...)}
}

// serveMetrics serves /metrics on [metrics] address, when set, and
// records its URL for Status; stop ends it.
func (s *Service) serveMetrics() (stop func(), err error) {
	if s.metrics == nil {
		return func() {}, nil
	}
	s.metrics.WatchVMs(s.ctl.RunningVMs)
	url, stopServing, err := s.metrics.Serve(s.cfg.Metrics.Address)
	if err != nil {
		return nil, err
	}
	s.metricsURL.Store(&url)
	return func() {
		s.metricsURL.Store(nil)
		stopServing()
	}, nil
}

package cri

import (
	"context"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// RuntimeName is what Version reports, as containerd reports "containerd".
const RuntimeName = "macvz"

// RuntimeVersion is set at link time (-X github.com/macvz/macvz/cri.RuntimeVersion=...).
var RuntimeVersion = "0.1.0-dev"

// criAPIVersion is the CRI API version served.
const criAPIVersion = "v1"

// Version answers kubelet's and crictl's handshake.
func (s *Service) Version(ctx context.Context, r *runtimeapi.VersionRequest) (*runtimeapi.VersionResponse, error) {
	return &runtimeapi.VersionResponse{
		Version:           "0.1.0", // the kubelet runtime API version, as containerd answers
		RuntimeName:       RuntimeName,
		RuntimeVersion:    RuntimeVersion,
		RuntimeApiVersion: criAPIVersion,
	}, nil
}

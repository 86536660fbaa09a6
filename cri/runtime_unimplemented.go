package cri

// RuntimeService verbs whose issue has not landed yet. Each answers
// Unimplemented with a message saying so, instead of the generated
// "method X not implemented", so a kubelet or crictl user sees why. A verb
// leaves this file when its own file (sandbox_run.go, ...) implements it.

import (
	"context"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

func notYet(verb string) error {
	return status.Errorf(codes.Unimplemented, "%s is not implemented by this macvz build yet", verb)
}

func (s *Service) UpdatePodSandboxResources(context.Context, *runtimeapi.UpdatePodSandboxResourcesRequest) (*runtimeapi.UpdatePodSandboxResourcesResponse, error) {
	return nil, notYet("UpdatePodSandboxResources")
}

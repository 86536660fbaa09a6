//go:build tools

// Package tools pins the Kubernetes binaries the integration tests run
// against macvz: k8s.io/kubernetes v1.37.2, its staging modules replaced by
// their published v0.37.2 versions (go.mod). Nothing here is compiled; the
// imports keep the binaries' dependencies in go.mod and go.sum. ../build.sh
// builds them, all six in one `go build`.
package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-proxy"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
	_ "k8s.io/kubernetes/cmd/kubectl"
	_ "k8s.io/kubernetes/cmd/kubelet"
)

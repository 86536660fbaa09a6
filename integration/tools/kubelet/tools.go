//go:build tools

// Package tools pins the kubelet that `make kubelet-e2e` runs against macvz:
// k8s.io/kubernetes v1.36.1, its staging modules replaced by their published
// v0.36.1 versions (go.mod). Nothing here is compiled; the import keeps the
// kubelet's dependencies in go.mod and go.sum. ../build.sh builds it.
package tools

import _ "k8s.io/kubernetes/cmd/kubelet"

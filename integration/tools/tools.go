//go:build tools

// Package tools pins the CRI test tools macvz's integration tests drive:
// crictl and critest from cri-tools v1.37.0. Nothing here is compiled (the
// tools build tag is never set); the imports only make `go mod tidy` keep
// every module that crictl and critest need in go.mod and go.sum.
// critest is a test binary (cmd/critest has only a _test.go file), and tidy
// does not follow dependencies' tests, so its imports are listed one by one.
// build.sh builds both binaries into bin/.
package tools

import (
	_ "github.com/onsi/ginkgo/v2"
	_ "github.com/onsi/ginkgo/v2/types"
	_ "github.com/onsi/gomega"
	_ "sigs.k8s.io/cri-tools/cmd/crictl"
	_ "sigs.k8s.io/cri-tools/pkg/benchmark"
	_ "sigs.k8s.io/cri-tools/pkg/common"
	_ "sigs.k8s.io/cri-tools/pkg/framework"
	_ "sigs.k8s.io/cri-tools/pkg/validate"
	_ "sigs.k8s.io/cri-tools/pkg/version"
)

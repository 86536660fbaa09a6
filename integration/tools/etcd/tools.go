//go:build tools

// Package tools pins the etcd server the integration tests' control plane
// runs: go.etcd.io/etcd/server/v3 v3.7.0, the version k8s.io/kubernetes
// v1.37.2 requires (../kubernetes/go.mod). Its own module, so etcd links the
// dependency versions of its own release rather than kubernetes' newer
// ones. Nothing here is compiled; ../build.sh builds the module's main
// package (etcdmain.Main) as bin/etcd.
package tools

import _ "go.etcd.io/etcd/server/v3"

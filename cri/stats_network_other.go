//go:build !linux

package cri

import (
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/macvz/macvz/runtime/store"
)

// nicUsage: a vz NIC (vmnet, a socket_vmnet datagram socket) has no
// host interface of its own to count the VM's traffic on, and the agent
// measures none, so a pod's network is not reported.
func nicUsage(*store.Network, int64) *runtimeapi.NetworkUsage { return nil }

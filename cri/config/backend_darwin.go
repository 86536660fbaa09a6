//go:build darwin

package config

// DefaultBackend on a Mac is Virtualization.framework.
const DefaultBackend = "vz"

// DefaultNodeNetwork on a Mac is the pod network: VMs on vz's NAT
// cannot reach each other, and kubelet in the node VM probes pod IPs.
const DefaultNodeNetwork = NodeNetworkPod

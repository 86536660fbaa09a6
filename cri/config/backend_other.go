//go:build !darwin

package config

// DefaultBackend off macOS is QEMU.
const DefaultBackend = "qemu"

// DefaultNodeNetwork off macOS is the host's (QEMU's user-mode NAT):
// the node VM's connections come from the host, which reaches pod IPs.
const DefaultNodeNetwork = NodeNetworkHost

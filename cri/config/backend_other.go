//go:build !darwin

package config

// DefaultBackend off macOS is QEMU.
const DefaultBackend = "qemu"

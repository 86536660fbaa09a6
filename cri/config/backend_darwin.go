//go:build darwin

package config

// DefaultBackend on a Mac is Virtualization.framework.
const DefaultBackend = "vz"

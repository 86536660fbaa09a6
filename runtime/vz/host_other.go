//go:build !darwin

package vz

// HostWarnings: the vz backend runs only on macOS.
func HostWarnings() []string { return nil }

//go:build !linux

package cri

import "testing"

// unmountBelow: only Linux makes the share a mount.
func unmountBelow(t testing.TB, dir string) {}

// mountsBelow: only Linux makes the share a mount.
func mountsBelow(t testing.TB, dir string) []string { return nil }

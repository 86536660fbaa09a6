//go:build !linux

package cri

import "testing"

// unmountBelow: only Linux makes the share a mount.
func unmountBelow(t *testing.T, dir string) {}

// mountsBelow: only Linux makes the share a mount.
func mountsBelow(t *testing.T, dir string) []string { return nil }

//go:build !linux

package agent

import "testing"

// forEachHelper: only Linux guests have an exec helper of their own.
func forEachHelper(t *testing.T, f func(t *testing.T, opt func(*config))) {
	f(t, func(*config) {})
}

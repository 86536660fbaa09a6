// Package testutil holds what macvz's tests share: the rule for skipping.
//
// Outside CI a test that lacks root or a tool skips and says what to
// install. Under CI=true it fails instead: .ci/run installs everything, so a
// skip there would hide a broken setup.
package testutil

import (
	"os"
	"os/exec"
	"testing"
)

// InCI reports whether the tests run under CI (CI=true).
func InCI() bool { return os.Getenv("CI") == "true" }

// Unavailable skips t outside CI and fails it under CI.
func Unavailable(t testing.TB, format string, args ...any) {
	t.Helper()
	if InCI() {
		t.Fatalf("CI=true and a requirement is missing: "+format, args...)
	}
	t.Skipf(format, args...)
}

// RequireRoot needs the test to run as root (loop devices, mounts, taps).
func RequireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		Unavailable(t, "needs root (run the tests with sudo, as CI does)")
	}
}

// RequireTool needs an executable on PATH; pkg names the Debian package
// that provides it.
func RequireTool(t testing.TB, tool, pkg string) string {
	t.Helper()
	p, err := exec.LookPath(tool)
	if err != nil {
		Unavailable(t, "needs %s: apt-get install -y %s", tool, pkg)
	}
	return p
}

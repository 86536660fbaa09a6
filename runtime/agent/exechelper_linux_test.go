package agent

import (
	"context"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"github.com/macvz/macvz/integration/guest"
	"github.com/macvz/macvz/integration/testutil"
	api "github.com/macvz/macvz/runtime/agentapi"
)

// The guest's exec helper (cmd/macvz-exec) is copied into sealed memory
// when loaded: the copy cannot be written, a change to the file after
// that reaches no process, and restricted processes start through it
// with their settings applied and no descriptor of it left open.
func TestExecHelperLoaded(t *testing.T) {
	testutil.RequireRoot(t)
	t.Run("go", func(t *testing.T) {
		// Built as the guest builder builds it (static, stripped).
		bin := filepath.Join(t.TempDir(), "macvz-exec")
		if err := guest.BuildStaticArch(context.Background(), runtime.GOARCH, guest.ExecHelperPackage, bin); err != nil {
			t.Fatal(err)
		}
		testExecHelperLoaded(t, bin)
	})
	t.Run("c", func(t *testing.T) { testExecHelperLoaded(t, buildCHelper(t)) })
}

func testExecHelperLoaded(t *testing.T, bin string) {
	path, err := loadExecHelper(bin)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(path, "/proc/self/fd/") {
		t.Fatalf("helper path %q", path)
	}
	if f, err := os.OpenFile(path, os.O_WRONLY, 0); err == nil {
		_, werr := f.Write([]byte("x"))
		f.Close()
		if werr == nil {
			t.Fatal("the loaded helper is writable")
		}
	}
	// A container's root user rewriting the file in the guest's root.
	if err := os.WriteFile(bin, []byte("#!/bin/false\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	if _, err := loadExecHelper(filepath.Join(t.TempDir(), "absent")); !os.IsNotExist(err) {
		t.Errorf("loading an absent helper: %v", err)
	}

	ta := startAgent(t, func(c *config) { c.execHelper = path })
	ro := t.TempDir()
	id := pid("helped", "")
	ta.run(t, &api.CreateProcessRequest{Id: id, NoNewPrivs: true, OwnMountNamespace: true, ReadonlyPaths: []string{ro},
		Argv: []string{"sh", "-c", "grep NoNewPrivs /proc/self/status; touch " + ro + "/x || echo read-only; ls /proc/self/fd"}})
	if st := ta.wait(t, id); st.ExitCode != 0 {
		t.Fatalf("exit %d: %s", st.ExitCode, ta.readAll(t, id, api.Stdio_STDERR))
	}
	out := ta.readAll(t, id, api.Stdio_STDOUT)
	if !strings.Contains(out, "NoNewPrivs:\t1") || !strings.Contains(out, "read-only") {
		t.Errorf("the helper's settings are not in force: %q", out)
	}
	for _, l := range strings.Fields(out) {
		if l == strings.TrimPrefix(path, "/proc/self/fd/") {
			t.Errorf("the process has the helper's descriptor %s open: %q", l, out)
		}
	}
}

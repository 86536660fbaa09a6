package agent

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/macvz/macvz/integration/testutil"
	api "github.com/macvz/macvz/runtime/agentapi"
)

// An exec started the moment its container's StartProcess answered
// joins the container's mount namespace as the container set it up (a
// read-only path is read-only), never the agent's: StartProcess waits
// for the exec helper to finish before answering.
func TestExecJoinsSetUpMountNamespace(t *testing.T) {
	testutil.RequireRoot(t)
	forEachHelper(t, testExecJoinsSetUpMountNamespace)
}

func testExecJoinsSetUpMountNamespace(t *testing.T, helper func(*config)) {
	ta := startAgent(t, helper)
	dir := t.TempDir()
	for i := range 5 {
		ctr := "ro" + string(rune('a'+i))
		ta.run(t, &api.CreateProcessRequest{Id: pid(ctr, ""), Argv: []string{"sleep", "30"},
			OwnMountNamespace: true, ReadonlyPaths: []string{dir}})
		target := filepath.Join(dir, ctr)
		ta.run(t, &api.CreateProcessRequest{Id: pid(ctr, "touch"), Argv: []string{"touch", target}})
		if st := ta.wait(t, pid(ctr, "touch")); st.ExitCode == 0 {
			t.Fatalf("run %d: an exec right after the start wrote into the container's read-only %s", i, dir)
		}
		if got := ta.readAll(t, pid(ctr, "touch"), api.Stdio_STDERR); !strings.Contains(got, "Read-only file system") {
			t.Errorf("run %d: touch: %q", i, got)
		}
		// The agent's own namespace is untouched.
		if err := os.WriteFile(target, nil, 0o644); err != nil {
			t.Errorf("run %d: %s not writable outside the container: %v", i, dir, err)
		}
		ta.client.SignalProcess(ctxT(t), &api.SignalProcessRequest{Id: pid(ctr, ""), Signal: 9})
	}
}

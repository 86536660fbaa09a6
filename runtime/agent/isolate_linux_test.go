package agent

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/macvz/macvz/integration/testutil"
	api "github.com/macvz/macvz/runtime/agentapi"
)

// TestContainerIsolation runs the exec helper for real (as root, on the
// host's kernel): a PID namespace of the container's own that its execs
// join, masked paths (a symbolic link is refused), a Localhost seccomp
// profile that execs inherit, and a memory limit on a machine without
// memory cgroups (this host's cgroup v1: the process runs unlimited).
func TestContainerIsolation(t *testing.T) {
	testutil.RequireRoot(t)
	forEachHelper(t, testContainerIsolation)
}

func testContainerIsolation(t *testing.T, helper func(*config)) {
	ta := startAgent(t, helper)
	dir := t.TempDir()
	secret := filepath.Join(dir, "secret")
	os.WriteFile(secret, []byte("hidden"), 0o644)
	sub := filepath.Join(dir, "sub")
	os.Mkdir(sub, 0o755)
	os.WriteFile(filepath.Join(sub, "f"), nil, 0o644)

	ta.run(t, &api.CreateProcessRequest{Id: pid("pidns", ""), Argv: []string{"sh", "-c", "echo $$; cat " + secret + "; ls " + sub},
		OwnMountNamespace: true, OwnPidNamespace: true, MaskedPaths: []string{secret, sub, filepath.Join(dir, "missing")}})
	if st := ta.wait(t, pid("pidns", "")); st.ExitCode != 0 {
		t.Fatalf("exit %d: %s", st.ExitCode, ta.readAll(t, pid("pidns", ""), api.Stdio_STDERR))
	}
	if got := ta.readAll(t, pid("pidns", ""), api.Stdio_STDOUT); got != "1\n" {
		t.Errorf("own PID namespace, masked file and directory: output %q, want only the shell's pid 1", got)
	}

	// Execs join the namespace: pid 1 there is the container's process.
	ta.run(t, &api.CreateProcessRequest{Id: pid("pidns2", ""), Argv: []string{"sleep", "30"}, OwnPidNamespace: true})
	ta.run(t, &api.CreateProcessRequest{Id: pid("pidns2", "x"), Argv: []string{"cat", "/proc/1/cmdline"}})
	ta.wait(t, pid("pidns2", "x"))
	if got := ta.readAll(t, pid("pidns2", "x"), api.Stdio_STDOUT); got != "sleep\x0030\x00" {
		t.Errorf("an exec's /proc/1/cmdline: %q, want the container's sleep", got)
	}
	ta.client.SignalProcess(ctxT(t), &api.SignalProcessRequest{Id: pid("pidns2", ""), Signal: 9})

	// A masked path through a symbolic link fails the start.
	link := filepath.Join(dir, "link")
	os.Symlink(secret, link)
	ta.run(t, &api.CreateProcessRequest{Id: pid("link", ""), Argv: []string{"true"}, MaskedPaths: []string{link}})
	if st := ta.wait(t, pid("link", "")); st.ExitCode == 0 {
		t.Error("a masked symbolic link was accepted")
	}
	if got := ta.readAll(t, pid("link", ""), api.Stdio_STDERR); !strings.Contains(got, "symbolic link") {
		t.Errorf("masked symbolic link: stderr %q", got)
	}

	// seccomp: the container and its execs.
	ta.run(t, &api.CreateProcessRequest{Id: pid("sec", ""), Argv: []string{"sleep", "30"}, Seccomp: []byte(blockChmod), MemoryLimitBytes: 64 << 20})
	ta.run(t, &api.CreateProcessRequest{Id: pid("sec", "chmod"), Argv: []string{"chmod", "600", secret}})
	if st := ta.wait(t, pid("sec", "chmod")); st.ExitCode == 0 {
		t.Error("chmod passed the container's seccomp profile in an exec")
	}
	if got := ta.readAll(t, pid("sec", "chmod"), api.Stdio_STDERR); !strings.Contains(got, "not permitted") {
		t.Errorf("chmod: stderr %q", got)
	}
	ta.run(t, &api.CreateProcessRequest{Id: pid("sec", "status"), Argv: []string{"grep", "Seccomp:", "/proc/self/status"}})
	ta.wait(t, pid("sec", "status"))
	if got := ta.readAll(t, pid("sec", "status"), api.Stdio_STDOUT); !strings.Contains(got, "2") {
		t.Errorf("an exec's seccomp mode: %q, want 2 (filter)", got)
	}
	ta.client.SignalProcess(ctxT(t), &api.SignalProcessRequest{Id: pid("sec", ""), Signal: 9})

	// The bounding set keeps only the listed capabilities; with
	// no_new_privs the RuntimeDefault filter loads last.
	ta.run(t, &api.CreateProcessRequest{Id: pid("caps", ""), Argv: []string{"grep", "-E", "^(CapBnd|NoNewPrivs|Seccomp):", "/proc/self/status"},
		RestrictCapabilities: true, Capabilities: []string{"CAP_CHOWN", "CAP_KILL"}, NoNewPrivs: true, SeccompRuntimeDefault: true})
	if st := ta.wait(t, pid("caps", "")); st.ExitCode != 0 {
		t.Fatalf("caps: exit %d: %s", st.ExitCode, ta.readAll(t, pid("caps", ""), api.Stdio_STDERR))
	}
	if got := strings.Join(strings.Fields(ta.readAll(t, pid("caps", ""), api.Stdio_STDOUT)), " "); got != "CapBnd: 0000000000000021 NoNewPrivs: 1 Seccomp: 2" {
		t.Errorf("restricted process: %q, want CAP_CHOWN and CAP_KILL (0x21), no_new_privs, a filter", got)
	}

	// A profile the agent cannot compile is refused at create.
	if _, err := ta.client.CreateProcess(ctxT(t), &api.CreateProcessRequest{Id: pid("bad", ""), Argv: []string{"true"}, Env: baseEnv(),
		Seccomp: []byte(`{"defaultAction": "SCMP_ACT_NOTIFY"}`)}); err == nil || !strings.Contains(err.Error(), "InvalidArgument") {
		t.Errorf("a NOTIFY profile: %v", err)
	}
}

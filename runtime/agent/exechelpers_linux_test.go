package agent

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"github.com/macvz/macvz/integration/guest"
	"github.com/macvz/macvz/integration/testutil"
	"github.com/macvz/macvz/runtime/agent/exechelper"
)

// forEachHelper runs f with each build of the exec helper a guest may
// have: the Go one (the agent re-executed, here the test binary, as
// cmd/macvz-exec runs the same package) and the C one
// (cmd/macvz-exec/c, what the guest builder installs when it has a C
// compiler), so both builds meet the same cases.
func forEachHelper(t *testing.T, f func(t *testing.T, opt func(*config))) {
	t.Run("go", func(t *testing.T) { f(t, func(*config) {}) })
	t.Run("c", func(t *testing.T) {
		p := buildCHelper(t)
		f(t, func(c *config) { c.execHelper = p })
	})
}

// buildCHelper compiles the C exec helper for this host.
func buildCHelper(t *testing.T) string {
	t.Helper()
	out := filepath.Join(t.TempDir(), "macvz-exec")
	err := guest.BuildExecHelperC(context.Background(), runtime.GOARCH, out)
	if errors.Is(err, guest.ErrNoCCompiler) {
		testutil.Unavailable(t, "%v", err)
	}
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// Both builds refuse the same malformed arguments, before doing anything,
// with exit status 127 and the reason on stderr.
func TestExecHelperRefusesBadArguments(t *testing.T) {
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	builds := map[string]string{"go": self, "c": buildCHelper(t)}
	cases := []struct {
		args []string
		want string
	}{
		{[]string{"uid=x", "--", "/bin/true", "true"}, `bad uid "x"`},
		{[]string{"gid=4294967296", "--", "/bin/true", "true"}, `bad gid "4294967296"`},
		{[]string{"group=-1", "--", "/bin/true", "true"}, `bad group "-1"`},
		{[]string{"caps=CAP_CHOWN,CAP_NOPE", "--", "/bin/true", "true"}, `unknown capability "CAP_NOPE"`},
		{[]string{"caps=CAP_CHOWN,", "--", "/bin/true", "true"}, `unknown capability ""`},
		{[]string{"sync=2", "--", "/bin/true", "true"}, `bad sync fd "2"`},
		{[]string{"mntns=join:0", "--", "/bin/true", "true"}, `bad mntns "join:0"`},
		{[]string{"mntns=other", "--", "/bin/true", "true"}, `bad mntns "other"`},
		{[]string{"seccomp=!!!!", "--", "/bin/true", "true"}, "bad seccomp program"},
		{[]string{"seccomp=AAAA", "--", "/bin/true", "true"}, "seccomp program of 3 bytes is not 1 to 4096 instructions"},
		{[]string{"seccompflags=1", "--", "/bin/true", "true"}, "seccomp flags without a program"},
		{[]string{"what=1", "--", "/bin/true", "true"}, `unknown setting "what=1"`},
		{[]string{"uid=0", "--"}, "no command"},
		{[]string{"uid=0"}, "no command"},
	}
	if os.Geteuid() == 0 {
		// Past the parsing: an unprivileged helper stops at setgroups.
		cases = append(cases, struct {
			args []string
			want string
		}{[]string{"--", "/nonexistent/x", "x"}, "exec /nonexistent/x: "})
	}
	for name, bin := range builds {
		// Every capability the agent may name is one the build knows
		// (the C build has its own table): past the parsing, whatever
		// stops it then.
		all := make([]string, 0, len(exechelper.CapNames))
		for n := range exechelper.CapNames {
			all = append(all, n)
		}
		out, _ := exec.Command(bin, ExecHelperArg, "caps="+strings.Join(all, ","), "--", "/nonexistent/x", "x").CombinedOutput()
		if strings.Contains(string(out), "unknown capability") {
			t.Errorf("%s: %s", name, out)
		}
		for _, c := range cases {
			cmd := exec.Command(bin, append([]string{ExecHelperArg}, c.args...)...)
			out, err := cmd.CombinedOutput()
			var ee *exec.ExitError
			if !errors.As(err, &ee) || ee.ExitCode() != 127 {
				t.Errorf("%s %q: %v, want exit status 127 (output %q)", name, c.args, err, out)
				continue
			}
			if !strings.HasPrefix(string(out), "macvz-agent: ") || !strings.Contains(string(out), c.want) {
				t.Errorf("%s %q: %q, want macvz-agent: ...%s", name, c.args, out, c.want)
			}
		}
	}
}

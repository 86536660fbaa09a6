//go:build linux

package integration

import (
	"bufio"
	"bytes"
	"encoding/json"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"testing"

	"howett.net/plist"

	"github.com/macvz/macvz/integration/testutil"
)

// TestMakeInstall runs `make install` into a DESTDIR, as a package build
// or `sudo make install` would, from the bin/ of `make build` (no VM, no
// root): every file where the daemon looks for it with its mode, the
// configuration written only when absent, the systemd unit pointing at the
// installed binary with KillMode=process (checked key by key here, and by
// `systemd-analyze verify`, which `make deps` installs for CI), the
// paths moved by PREFIX, SYSCONFDIR and CNI_BIN_DIR, a Mac's layout (its
// launchd job, the darwin plugin and agent), and a clear error before
// anything is built.
func TestMakeInstall(t *testing.T) {
	testutil.RequireTool(t, "make", "make")
	root := repoRoot(t)
	for _, f := range []string{"bin/macvz", "bin/macvz-shim", "bin/macvz-net", "bin/host-local",
		"bin/darwin-arm64/macvz-net", "bin/darwin-arm64/macvz-agent"} {
		if _, err := os.Stat(filepath.Join(root, f)); err != nil {
			testutil.Unavailable(t, "needs %s: run `make build`", f)
		}
	}
	defaultTOML := cmdOutput(t, filepath.Join(root, "bin/macvz"), "config", "default")
	defaultNet := cmdOutput(t, filepath.Join(root, "bin/macvz"), "config", "network")

	t.Run("defaults", func(t *testing.T) {
		dest := t.TempDir()
		out := makeInstall(t, root, root, "DESTDIR="+dest, "PREFIX=/usr/local")
		if !strings.Contains(out, "systemctl daemon-reload && systemctl enable --now macvz") {
			t.Errorf("make install does not say how to start the service:\n%s", out)
		}
		wantTree(t, dest, map[string]os.FileMode{
			"usr/local/bin/macvz":               0o755,
			"usr/local/bin/macvz-shim":          0o755,
			"opt/macvz/bin/macvz-net":           0o755,
			"opt/macvz/bin/host-local":          0o755,
			"etc/macvz/config.toml":             0o644,
			"etc/macvz/net.d/10-macvz.conflist": 0o644,
			"etc/systemd/system/macvz.service":  0o644,
			"usr":                               0o755, "usr/local": 0o755, "usr/local/bin": 0o755,
			"opt": 0o755, "opt/macvz": 0o755, "opt/macvz/bin": 0o755,
			"etc": 0o755, "etc/macvz": 0o755, "etc/macvz/net.d": 0o755,
			"etc/systemd": 0o755, "etc/systemd/system": 0o755,
		})
		for inst, src := range map[string]string{
			"usr/local/bin/macvz": "bin/macvz", "usr/local/bin/macvz-shim": "bin/macvz-shim",
			"opt/macvz/bin/macvz-net": "bin/macvz-net", "opt/macvz/bin/host-local": "bin/host-local",
		} {
			sameFile(t, filepath.Join(dest, inst), filepath.Join(root, src))
		}
		// With the default paths the configuration is `macvz config
		// default` itself (config_test.go decodes that text), and the
		// network `macvz config network`.
		if got := read(t, filepath.Join(dest, "etc/macvz/config.toml")); got != defaultTOML {
			t.Errorf("installed config.toml differs from `macvz config default`:\n%s", got)
		}
		net := read(t, filepath.Join(dest, "etc/macvz/net.d/10-macvz.conflist"))
		if net != defaultNet || !json.Valid([]byte(net)) {
			t.Errorf("installed conflist is not `macvz config network`:\n%s", net)
		}
		unitPath := filepath.Join(dest, "etc/systemd/system/macvz.service")
		unit := parseUnit(t, read(t, unitPath))
		checkUnit(t, unit, "/usr/local/bin/macvz serve --config /etc/macvz/config.toml")
		verifyUnit(t, dest, unitPath)

		// A second install keeps the user's configuration and network,
		// and replaces what is macvz's own (the unit, the binaries).
		mine := "# mine\nroot = \"/srv/macvz\"\n"
		mineNet := `{"cniVersion": "1.1.0", "name": "mine", "plugins": [{"type": "macvz-net"}]}`
		os.WriteFile(filepath.Join(dest, "etc/macvz/config.toml"), []byte(mine), 0o600)
		os.Remove(filepath.Join(dest, "etc/macvz/net.d/10-macvz.conflist"))
		os.WriteFile(filepath.Join(dest, "etc/macvz/net.d/20-mine.conflist"), []byte(mineNet), 0o600)
		os.WriteFile(unitPath, []byte("[Service]\nExecStart=/bin/false\n"), 0o644)
		os.WriteFile(filepath.Join(dest, "usr/local/bin/macvz"), []byte("old"), 0o755)
		out = makeInstall(t, root, root, "DESTDIR="+dest, "PREFIX=/usr/local")
		if got := read(t, filepath.Join(dest, "etc/macvz/config.toml")); got != mine {
			t.Errorf("make install overwrote an existing config.toml:\n%s\n%s", got, out)
		}
		if _, err := os.Stat(filepath.Join(dest, "etc/macvz/net.d/10-macvz.conflist")); err == nil {
			t.Errorf("make install added a conflist next to the user's 20-mine.conflist:\n%s", out)
		}
		if got := read(t, filepath.Join(dest, "etc/macvz/net.d/20-mine.conflist")); got != mineNet {
			t.Errorf("make install changed the user's conflist: %s", got)
		}
		if !strings.Contains(out, "kept "+filepath.Join(dest, "etc/macvz/config.toml")) {
			t.Errorf("make install does not say it kept the configuration:\n%s", out)
		}
		checkUnit(t, parseUnit(t, read(t, unitPath)), "/usr/local/bin/macvz serve --config /etc/macvz/config.toml")
		sameFile(t, filepath.Join(dest, "usr/local/bin/macvz"), filepath.Join(root, "bin/macvz"))
		// A dangling symlink is a configuration too (one managed elsewhere).
		os.Remove(filepath.Join(dest, "etc/macvz/config.toml"))
		os.Symlink("/nonexistent/config.toml", filepath.Join(dest, "etc/macvz/config.toml"))
		makeInstall(t, root, root, "DESTDIR="+dest, "PREFIX=/usr/local")
		if l, err := os.Readlink(filepath.Join(dest, "etc/macvz/config.toml")); err != nil || l != "/nonexistent/config.toml" {
			t.Errorf("make install replaced a symlinked config.toml: %q, %v", l, err)
		}
	})

	t.Run("paths", func(t *testing.T) {
		dest := t.TempDir()
		makeInstall(t, root, root, "DESTDIR="+dest, "PREFIX=/opt/mvz", "SYSCONFDIR=/usr/local/etc",
			"CNI_BIN_DIR=/opt/cni/bin", "SYSTEMD_UNIT_DIR=/lib/systemd/system")
		for _, f := range []string{"opt/mvz/bin/macvz", "opt/mvz/bin/macvz-shim", "opt/cni/bin/macvz-net", "opt/cni/bin/host-local"} {
			if fi, err := os.Stat(filepath.Join(dest, f)); err != nil || fi.Mode().Perm() != 0o755 {
				t.Errorf("%s: %v", f, err)
			}
		}
		unitPath := filepath.Join(dest, "lib/systemd/system/macvz.service")
		checkUnit(t, parseUnit(t, read(t, unitPath)), "/opt/mvz/bin/macvz serve --config /usr/local/etc/macvz/config.toml")
		verifyUnit(t, dest, unitPath)
		// The default configuration follows the moved directories, so the
		// daemon finds its network and plugins where they were put.
		cfg := read(t, filepath.Join(dest, "usr/local/etc/macvz/config.toml"))
		for _, want := range []string{`conf_dir = "/usr/local/etc/macvz/net.d"`, `bin_dirs = ["/opt/cni/bin"]`} {
			if !strings.Contains(cfg, want) {
				t.Errorf("config.toml lacks %s", want)
			}
		}
		if strings.Contains(strings.ReplaceAll(cfg, "/usr/local/etc/macvz/", ""), "/etc/macvz/") {
			t.Errorf("config.toml still names /etc/macvz/:\n%s", cfg)
		}
		if _, err := os.Stat(filepath.Join(dest, "usr/local/etc/macvz/net.d/10-macvz.conflist")); err != nil {
			t.Error(err)
		}
	})

	// A Mac's install, staged here: INSTALL_OS is what `uname -s` would
	// say there. The darwin plugin and agent (the agent next to macvz,
	// where `macvz image install-agent` looks), the launchd job with the
	// installed paths, no systemd unit.
	t.Run("darwin", func(t *testing.T) {
		dest := t.TempDir()
		out := makeInstall(t, root, root, "DESTDIR="+dest, "PREFIX=/opt/homebrew", "INSTALL_OS=Darwin")
		if !strings.Contains(out, "launchctl bootstrap system /Library/LaunchDaemons/io.macvz.macvz.plist") {
			t.Errorf("make install does not say how to start the launchd job:\n%s", out)
		}
		sameFile(t, filepath.Join(dest, "opt/macvz/bin/macvz-net"), filepath.Join(root, "bin/darwin-arm64/macvz-net"))
		sameFile(t, filepath.Join(dest, "opt/homebrew/bin/macvz-agent"), filepath.Join(root, "bin/darwin-arm64/macvz-agent"))
		if _, err := os.Stat(filepath.Join(dest, "etc/systemd")); err == nil {
			t.Error("a Mac's install wrote a systemd unit")
		}
		p := filepath.Join(dest, "Library/LaunchDaemons/io.macvz.macvz.plist")
		if fi, err := os.Stat(p); err != nil || fi.Mode().Perm() != 0o644 {
			t.Fatalf("launchd job: %v", err)
		}
		var job struct {
			Label               string
			ProgramArguments    []string
			AbandonProcessGroup bool
			KeepAlive           bool
		}
		if _, err := plist.Unmarshal([]byte(read(t, p)), &job); err != nil {
			t.Fatal(err)
		}
		want := []string{"/opt/homebrew/bin/macvz", "serve", "--config", "/etc/macvz/config.toml"}
		if job.Label != "io.macvz.macvz" || strings.Join(job.ProgramArguments, " ") != strings.Join(want, " ") ||
			!job.AbandonProcessGroup || !job.KeepAlive {
			t.Errorf("launchd job %+v, want ProgramArguments %q with AbandonProcessGroup and KeepAlive", job, want)
		}
	})

	// The Homebrew formula cannot run here (no Mac): it must at least name
	// what exists (the commands `make build` builds, the entitlements
	// `make sign` applies, the launchd job) and be valid Ruby where ruby is
	// installed (it is not a CI requirement).
	t.Run("homebrew", func(t *testing.T) {
		f := read(t, filepath.Join(root, "cmd/macvz/homebrew/macvz.rb"))
		for _, want := range []string{`"./cmd/macvz"`, `"./cmd/macvz-shim"`, `"./cmd/macvz-agent"`, `"./cmd/macvz-net"`,
			`"cmd/macvz-shim/macvz.entitlements"`, `"cmd/macvz/launchd/io.macvz.macvz.plist"`, `"/usr/local/bin/macvz"`,
			"github.com/containernetworking/plugins/plugins/ipam/host-local", "service do", "require_root true"} {
			if !strings.Contains(f, want) {
				t.Errorf("the formula lacks %s", want)
			}
			if p, ok := strings.CutPrefix(strings.Trim(want, `"`), "./"); ok || strings.HasPrefix(want, `"cmd/`) {
				if _, err := os.Stat(filepath.Join(root, p)); err != nil {
					t.Errorf("the formula names %s: %v", want, err)
				}
			}
		}
		if !strings.Contains(read(t, filepath.Join(root, "Makefile")), "--entitlements cmd/macvz-shim/macvz.entitlements") {
			t.Error("make sign no longer uses cmd/macvz-shim/macvz.entitlements: update the formula with it")
		}
		if rb, err := exec.LookPath("ruby"); err == nil {
			if out, err := exec.Command(rb, "-wc", filepath.Join(root, "cmd/macvz/homebrew/macvz.rb")).CombinedOutput(); err != nil ||
				strings.TrimSpace(string(out)) != "Syntax OK" {
				t.Errorf("ruby -wc: %v\n%s", err, out)
			}
		}
	})

	// Before `make build` there is nothing to install: say so, write nothing.
	t.Run("unbuilt", func(t *testing.T) {
		dest, cwd := t.TempDir(), t.TempDir()
		cmd := exec.Command("make", "-f", filepath.Join(root, "Makefile"), "install", "DESTDIR="+dest)
		cmd.Dir, cmd.Env = cwd, makeEnv()
		out, err := cmd.CombinedOutput()
		if err == nil || !strings.Contains(string(out), "not built: bin/macvz") || !strings.Contains(string(out), "run make build") {
			t.Errorf("make install without a build: %v\n%s", err, out)
		}
		if ents, _ := os.ReadDir(dest); len(ents) != 0 {
			t.Errorf("make install without a build wrote %v", ents)
		}
	})
}

func repoRoot(t *testing.T) string {
	t.Helper()
	_, self, _, _ := runtime.Caller(0)
	return filepath.Dir(filepath.Dir(self))
}

// makeEnv is the environment without what would change the install
// behind the test's back: a make above this one (`make integration`)
// passes its command-line variables down in MAKEFLAGS, and ?= takes
// PREFIX and the rest from the environment.
func makeEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		switch k {
		case "MAKEFLAGS", "MFLAGS", "MAKELEVEL", "GNUMAKEFLAGS", "DESTDIR", "PREFIX", "SYSCONFDIR",
			"CNI_BIN_DIR", "SYSTEMD_UNIT_DIR", "LAUNCHD_DIR", "INSTALL_OS":
			continue
		}
		env = append(env, kv)
	}
	return env
}

func makeInstall(t *testing.T, root, dir string, vars ...string) string {
	t.Helper()
	cmd := exec.Command("make", append([]string{"-C", root, "install"}, vars...)...)
	cmd.Dir, cmd.Env = dir, makeEnv()
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("make install %s: %v\n%s", strings.Join(vars, " "), err, out)
	}
	return string(out)
}

func cmdOutput(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).Output()
	if err != nil {
		t.Fatalf("%s %s: %v", name, strings.Join(args, " "), err)
	}
	return string(out)
}

func read(t *testing.T, p string) string {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func sameFile(t *testing.T, got, want string) {
	t.Helper()
	a, err := os.ReadFile(got)
	if err != nil {
		t.Error(err)
		return
	}
	b, err := os.ReadFile(want)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(a, b) {
		t.Errorf("%s is not a copy of %s", got, want)
	}
}

// wantTree checks that dest holds exactly these files and directories
// with these permissions: nothing missing, no leftover temporary file.
func wantTree(t *testing.T, dest string, want map[string]os.FileMode) {
	t.Helper()
	got := map[string]os.FileMode{}
	err := filepath.WalkDir(dest, func(p string, d fs.DirEntry, err error) error {
		if err != nil || p == dest {
			return err
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dest, p)
		if !fi.Mode().IsRegular() && !fi.IsDir() {
			t.Errorf("%s: %v, want a file or directory", rel, fi.Mode())
		}
		got[rel] = fi.Mode().Perm()
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for n := range got {
		names = append(names, n)
	}
	for n := range want {
		if _, ok := got[n]; !ok {
			names = append(names, n)
		}
	}
	sort.Strings(names)
	for _, n := range names {
		g, gok := got[n]
		w, wok := want[n]
		switch {
		case !wok:
			t.Errorf("make install wrote %s (mode %v), which it should not", n, g)
		case !gok:
			t.Errorf("make install did not write %s", n)
		case g != w:
			t.Errorf("%s: mode %v, want %v", n, g, w)
		}
	}
}

// unitFile is a systemd unit as section -> key -> values, in order.
type unitFile map[string]map[string][]string

// parseUnit reads a unit strictly: sections and keys only from the sets
// the unit uses (a misspelt key, which systemd would ignore with a
// warning, fails here even where systemd-analyze is missing), no line
// outside a section, no continuation lines.
func parseUnit(t *testing.T, text string) unitFile {
	t.Helper()
	known := map[string][]string{
		"Unit":    {"Description", "After", "Wants", "Before", "Documentation"},
		"Service": {"Type", "ExecStart", "KillMode", "TimeoutStopSec", "Restart", "RestartSec", "LimitNOFILE", "LimitNPROC", "LimitCORE", "TasksMax", "Delegate"},
		"Install": {"WantedBy"},
	}
	u := unitFile{}
	section := ""
	sc := bufio.NewScanner(strings.NewReader(text))
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		switch {
		case line == "" || strings.HasPrefix(line, "#") || strings.HasPrefix(line, ";"):
			continue
		case strings.HasSuffix(line, "\\"):
			t.Fatalf("unit line %d: continuation lines are not used: %q", n, line)
		case strings.HasPrefix(line, "[") && strings.HasSuffix(line, "]"):
			section = line[1 : len(line)-1]
			if _, ok := known[section]; !ok {
				t.Fatalf("unit line %d: unknown section [%s]", n, section)
			}
			if u[section] == nil {
				u[section] = map[string][]string{}
			}
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok || section == "" {
			t.Fatalf("unit line %d: not a key=value inside a section: %q", n, line)
		}
		k, v = strings.TrimSpace(k), strings.TrimSpace(v)
		found := false
		for _, kk := range known[section] {
			found = found || kk == k
		}
		if !found {
			t.Fatalf("unit line %d: unknown key %s in [%s]", n, k, section)
		}
		u[section][k] = append(u[section][k], v)
	}
	return u
}

// one is the single value of a key ("" when absent, a failure when set
// twice).
func (u unitFile) one(t *testing.T, section, key string) string {
	t.Helper()
	vs := u[section][key]
	if len(vs) > 1 {
		t.Errorf("[%s] %s set %d times", section, key, len(vs))
	}
	if len(vs) == 0 {
		return ""
	}
	return vs[len(vs)-1]
}

// checkUnit holds the unit to what the daemon needs of it.
func checkUnit(t *testing.T, u unitFile, execStart string) {
	t.Helper()
	if got := u.one(t, "Service", "ExecStart"); got != execStart {
		t.Errorf("ExecStart=%q, want %q", got, execStart)
	}
	// The per-VM shims (and their VMs) must outlive a daemon restart.
	if got := u.one(t, "Service", "KillMode"); got != "process" {
		t.Errorf("KillMode=%q, want process", got)
	}
	if got := u.one(t, "Service", "Restart"); got != "always" {
		t.Errorf("Restart=%q, want always", got)
	}
	if got := u.one(t, "Service", "Type"); got != "exec" {
		t.Errorf("Type=%q, want exec", got)
	}
	if n, err := strconv.Atoi(u.one(t, "Service", "LimitNOFILE")); err != nil || n < 65536 {
		t.Errorf("LimitNOFILE=%q, want at least 65536", u.one(t, "Service", "LimitNOFILE"))
	}
	if d := u.one(t, "Service", "Delegate"); d != "" {
		t.Errorf("Delegate=%s: macvz makes no host cgroups (see the unit's comment)", d)
	}
	for _, key := range []string{"After", "Wants"} {
		if !strings.Contains(" "+strings.Join(u["Unit"][key], " ")+" ", " network-online.target ") {
			t.Errorf("[Unit] %s lacks network-online.target: %q", key, u["Unit"][key])
		}
	}
	if got := u.one(t, "Install", "WantedBy"); got != "multi-user.target" {
		t.Errorf("WantedBy=%q, want multi-user.target", got)
	}
}

// verifyUnit runs `systemd-analyze verify` on the installed unit. It
// checks that ExecStart's program exists and is executable on this host,
// so the copy it reads names the staged binary under dest; everything
// else is the unit as installed. Any warning fails: systemd-analyze exits
// 0 on an unknown key, only saying so.
func verifyUnit(t *testing.T, dest, unitPath string) {
	t.Helper()
	sa := testutil.RequireTool(t, "systemd-analyze", "systemd")
	text := read(t, unitPath)
	var lines []string
	for _, l := range strings.Split(text, "\n") {
		if v, ok := strings.CutPrefix(l, "ExecStart="); ok {
			l = "ExecStart=" + dest + v
		}
		lines = append(lines, l)
	}
	dir := t.TempDir()
	p := filepath.Join(dir, "macvz.service")
	if err := os.WriteFile(p, []byte(strings.Join(lines, "\n")), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(sa, "verify", p).CombinedOutput()
	if err != nil || len(bytes.TrimSpace(out)) != 0 {
		t.Errorf("systemd-analyze verify %s: %v\n%s", unitPath, err, out)
	}
}

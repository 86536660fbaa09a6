package integration

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/macvz/macvz/integration/testutil"
	"github.com/macvz/macvz/internal/logbuf"
)

var (
	macvzBin  string
	crictlBin string
	// testTmp is the test binary's own directory, removed when it ends
	// (built once per binary, such as the node image, goes there).
	testTmp string
)

func TestMain(m *testing.M) {
	os.Exit(run(m))
}

func run(m *testing.M) int {
	tmp, err := os.MkdirTemp("", "macvz-integration-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(tmp)
	testTmp = tmp
	macvzBin = os.Getenv("MACVZ")
	if macvzBin == "" {
		macvzBin = filepath.Join(tmp, "macvz")
		// The daemon runs its VMs' shims from the macvz-shim next to it.
		for _, c := range []string{"macvz", "macvz-shim"} {
			cmd := exec.Command("go", "build", "-o", filepath.Join(tmp, c), "github.com/macvz/macvz/cmd/"+c)
			cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
			if err := cmd.Run(); err != nil {
				fmt.Fprintf(os.Stderr, "building %s: %v\n", c, err)
				return 1
			}
		}
	}
	crictlBin = os.Getenv("CRICTL")
	if crictlBin == "" {
		_, self, _, _ := runtime.Caller(0)
		crictlBin = filepath.Join(filepath.Dir(self), "tools", "bin", "crictl")
	}
	return m.Run()
}

// requireCrictl returns the crictl binary built by integration/tools.
func requireCrictl(t testing.TB) string {
	t.Helper()
	if _, err := os.Stat(crictlBin); err != nil {
		testutil.Unavailable(t, "needs crictl at %s: run `make tools` (builds cri-tools v1.37.0)", crictlBin)
	}
	return crictlBin
}

// daemon is one `macvz serve` started for a test.
type daemon struct {
	t      testing.TB
	dir    string
	socket string
	cmd    *exec.Cmd
	log    *logbuf.Buffer
	netns  string
	state  string // the configured state directory
}

// startDaemon writes config (extra TOML appended to the paths) and runs
// macvz serve until the test ends.
func startDaemon(t testing.TB, extraTOML string) *daemon {
	t.Helper()
	return startDaemonIn(t, "", extraTOML)
}

// startDaemonIn is startDaemon inside the named network namespace (ip
// netns); "" is the test's own.
func startDaemonIn(t testing.TB, netns, extraTOML string) *daemon {
	t.Helper()
	return startDaemonState(t, netns, "", extraTOML)
}

// startDaemonState is startDaemonIn with the daemon's state directory
// at state ("" = its own temporary directory's state/).
func startDaemonState(t testing.TB, netns, state, extraTOML string) *daemon {
	t.Helper()
	// Short: a sandbox's sockets live under it (sun_path is 108 bytes).
	dir, err := os.MkdirTemp("", "mvz")
	if err != nil {
		t.Fatal(err)
	}
	if state == "" {
		state = filepath.Join(dir, "state")
	}
	d := &daemon{t: t, dir: dir, socket: filepath.Join(dir, "macvz.sock"), log: &logbuf.Buffer{}, netns: netns, state: state}
	cfg := fmt.Sprintf("root = %q\nstate = %q\nsocket = %q\n\n[log]\nlevel = \"debug\"\n\n%s\n",
		filepath.Join(dir, "root"), state, d.socket, extraTOML)
	if !strings.Contains(extraTOML, "[network]") {
		// Never the host's /etc/macvz/net.d: an empty directory of our own.
		cfg += fmt.Sprintf("\n[network]\nconf_dir = %q\n", filepath.Join(dir, "net.d"))
	}
	if err := os.WriteFile(d.configPath(), []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		d.stop()
		if t.Failed() {
			t.Logf("macvz log:\n%s", d.log.String())
		}
		os.RemoveAll(dir)
	})
	d.start()
	return d
}

func (d *daemon) configPath() string { return filepath.Join(d.dir, "config.toml") }

// start runs macvz serve and waits for its socket.
func (d *daemon) start() {
	t := d.t
	t.Helper()
	d.cmd = exec.Command(macvzBin, "serve", "--config", d.configPath())
	if d.netns != "" {
		// ip netns exec execs macvz in place: the same process.
		d.cmd = exec.Command("ip", "netns", "exec", d.netns, macvzBin, "serve", "--config", d.configPath())
	}
	d.cmd.Stdout, d.cmd.Stderr = d.log, d.log
	if err := d.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		if c, err := net.Dial("unix", d.socket); err == nil {
			c.Close()
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("macvz did not create %s in 30s; log:\n%s", d.socket, d.log.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// crash kills the daemon with SIGKILL (its shims live on) and starts a
// new one on the same state.
func (d *daemon) crash() {
	d.t.Helper()
	d.cmd.Process.Kill()
	d.cmd.Wait()
	fmt.Fprintf(d.log, "---- daemon killed with SIGKILL, restarting ----\n")
	d.start()
}

func (d *daemon) stop() {
	if d.cmd.ProcessState != nil {
		return
	}
	d.cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan struct{})
	go func() { d.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(20 * time.Second):
		d.cmd.Process.Kill()
		<-done
	}
}

// root is the daemon's persistent data directory.
func (d *daemon) root() string { return filepath.Join(d.dir, "root") }

// crictl runs crictl against the daemon and returns its combined output.
func (d *daemon) crictl(args ...string) (string, error) {
	d.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	full := append([]string{"--config", d.crictlConfig(), "--runtime-endpoint", "unix://" + d.socket, "--image-endpoint", "unix://" + d.socket, "--timeout", "4m"}, args...)
	// On success only stdout, which JSON output (-o json) must be alone
	// in; on failure stderr too, where crictl prints the gRPC status.
	var stdout, stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, requireCrictl(d.t), full...)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.String() + stderr.String(), err
	}
	return stdout.String(), nil
}

// mustCrictl fails the test when crictl fails.
func (d *daemon) mustCrictl(args ...string) string {
	d.t.Helper()
	out, err := d.crictl(args...)
	if err != nil {
		d.t.Fatalf("crictl %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

// crictlConfig is an empty crictl config file: without one crictl warns
// on every call that /etc/crictl.yaml is missing, and the flags say all.
func (d *daemon) crictlConfig() string {
	p := filepath.Join(d.dir, "crictl.yaml")
	if _, err := os.Stat(p); err != nil {
		if err := os.WriteFile(p, nil, 0o600); err != nil {
			d.t.Fatal(err)
		}
	}
	return p
}

// runtimeClient is a CRI RuntimeService client on the daemon's socket,
// for calls crictl cannot make.
func (d *daemon) runtimeClient(t testing.TB) runtimeapi.RuntimeServiceClient {
	t.Helper()
	conn, err := grpc.NewClient("unix://"+d.socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return runtimeapi.NewRuntimeServiceClient(conn)
}

// removePodsAtEnd removes, when t ends, every pod a test left (it
// failed half way), stops the daemon (which discards its pooled VMs,
// vm.warm_pool), and fails t for any VM or shim process still running
// under the daemon's state: shims are built to outlive the daemon, so
// nothing else would stop them.
func (d *daemon) removePodsAtEnd(t testing.TB) {
	t.Cleanup(func() {
		if out, err := d.crictl("rmp", "-f", "-a"); err != nil {
			t.Errorf("removing the pods left: %v\n%s", err, out)
		}
		d.stop()
		for _, p := range processesUnder(d.state) {
			t.Errorf("process left after every pod was removed: %s", p)
			if pid, err := strconv.Atoi(strings.SplitN(p, ":", 2)[0]); err == nil {
				syscall.Kill(pid, syscall.SIGKILL)
			}
		}
	})
}

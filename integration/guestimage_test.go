package integration

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/macvz/macvz/integration/guest"
	"github.com/macvz/macvz/integration/testimage"
	"github.com/macvz/macvz/integration/testregistry"
	"github.com/macvz/macvz/integration/testutil"
)

// guestImages builds the QEMU test guest (integration/guest) once per
// test binary: the agent as /init, the Debian kernel and busybox from the
// package cache (guest.DefaultCacheDir, filled by apt-get download).
// It has the hostile tags too; newVMTest pushes only plain and httpd.
var guestImages = sync.OnceValues(func() (map[string]testimage.Image, error) {
	dir, err := os.MkdirTemp(testTmp, "macvz-guest-")
	if err != nil {
		return nil, err
	}
	// Built as make guest-image builds it (guest.BuildStatic: static,
	// no symbol table or DWARF), so that the tests boot the guest users
	// do, at its size.
	agent := filepath.Join(dir, "macvz-agent")
	if err := guest.BuildStatic(context.Background(), guest.AgentPackage, agent); err != nil {
		return nil, err
	}
	// The hostile tags' agent (integration/hostile_test.go).
	hostile := filepath.Join(dir, "macvz-agent-hostile")
	if err := guest.BuildStatic(context.Background(), guest.AgentPackage, hostile, guest.HostileTag); err != nil {
		return nil, err
	}
	res, err := guest.Build(context.Background(), guest.Options{Out: dir, Agent: agent, HostileAgent: hostile, Cache: guest.DefaultCacheDir()})
	if err != nil {
		return nil, err
	}
	if err := checkExecHelper(res.Info); err != nil {
		return nil, err
	}
	return guest.Load(res.Layout)
})

// checkExecHelper: under CI every test guest carries the exec helper's C
// build (make deps installs the compilers); the Go build there would
// hide a C build that no longer compiles.
func checkExecHelper(info guest.Info) error {
	if testutil.InCI() && info.ExecHelper != guest.ExecHelperC {
		return fmt.Errorf("CI=true and the %s guest's exec helper is the %q build, not C: make deps installs gcc, libc6-dev and the arm64 cross compiler", info.Arch, info.ExecHelper)
	}
	return nil
}

// vmTest is what every VM test needs: root, QEMU, crictl, the guest
// images pushed to a fresh registry, and a daemon using TCG.
type vmTest struct {
	d   *daemon
	reg *testregistry.Registry
	// pullHost is the registry's host:port as the daemon reaches it.
	pullHost string
	plain    string // ref of the plain guest (no default process)
	httpd    string // ref of the guest whose default process is httpd
}

func newVMTest(t *testing.T) *vmTest { return newVMTestTB(t) }

func newVMTestTB(t testing.TB) *vmTest {
	t.Helper()
	return newVMTestIn(t, nil, "")
}

// netNamespace is where a daemon runs (integration/nettest.NetNS on
// Linux): its name for ip netns exec, and listening inside it.
type netNamespace interface {
	NSName() string
	Listen(network, addr string) (net.Listener, error)
}

// newVMTestIn starts the daemon in a network namespace (netns "" = the
// test's own) with extra configuration.
func newVMTestIn(t testing.TB, netns netNamespace, extraTOML string) *vmTest {
	t.Helper()
	return newVMTestState(t, netns, "", extraTOML)
}

// newVMTestState is newVMTestIn with the daemon's state directory at
// state ("" = a temporary one).
func newVMTestState(t testing.TB, netns netNamespace, state, extraTOML string) *vmTest {
	t.Helper()
	testutil.RequireRoot(t)
	testutil.RequireTool(t, "qemu-system-x86_64", "qemu-system-x86")
	requireCrictl(t)
	imgs, err := guestImages()
	if err != nil {
		t.Fatalf("building the test guest: %v", err)
	}
	reg := testregistry.Start(t, testregistry.Options{})
	ctx := context.Background()
	for _, tag := range []string{guest.RefPlain, guest.RefHTTPD} {
		if err := reg.Push(ctx, "macvz/guest", tag, imgs[tag]); err != nil {
			t.Fatal(err)
		}
	}
	v := &vmTest{reg: reg, pullHost: reg.Host()}
	if netns != nil {
		// The daemon pulls from inside the namespace: serve it there too.
		ln, err := netns.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		v.pullHost = reg.ServeOn(ln)
	}
	v.plain = v.pullHost + "/macvz/guest:" + guest.RefPlain
	v.httpd = v.pullHost + "/macvz/guest:" + guest.RefHTTPD
	nsName := ""
	if netns != nil {
		nsName = netns.NSName()
	}
	v.d = startDaemonState(t, nsName, state, `[qemu]
accel = "tcg"

[registry.hosts."`+v.pullHost+`"]
insecure = true
`+extraTOML)
	// Whatever a test leaves (it failed half way), its VMs must not
	// outlive it: shims are built to survive the daemon.
	v.d.removePodsAtEnd(t)
	v.d.mustCrictl("pull", v.plain)
	v.d.mustCrictl("pull", v.httpd)
	return v
}

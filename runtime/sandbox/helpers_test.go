package sandbox

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/macvz/macvz/netplugin/cnimgr"
	"github.com/macvz/macvz/netplugin/portproxy"
	"github.com/macvz/macvz/runtime/shim/shimtest"
	"github.com/macvz/macvz/runtime/store"
	"github.com/macvz/macvz/snapshotter"
)

// testConfig is a controller configuration with the daemon's defaults
// that matter to the tests, and warm start on.
func testConfig(dir string) Config {
	return Config{
		Backend: "qemu", StateDir: filepath.Join(dir, "sandboxes"),
		WarmDir: filepath.Join(dir, "warm"), WarmStates: 4,
		DefaultCPUs: 1, DefaultMemoryBytes: 512 << 20,
	}
}

// newTestController is a controller over fresh stores in a temporary
// directory, with a pod network whose configuration directory is empty
// (not ready: only host-network sandboxes can be made).
func newTestController(t *testing.T) *Controller {
	c, _ := newFakeController(t, t.TempDir(), shimtest.New())
	return c
}

// newFakeController is a controller over the stores in dir (fresh or
// left by an earlier controller) whose shims are fakes; each of opts
// changes testConfig first.
func newFakeController(t *testing.T, dir string, shims *shimtest.Launcher, opts ...func(*Config)) (*Controller, *store.Store) {
	t.Helper()
	sn, err := snapshotter.New(filepath.Join(dir, "snapshots"))
	if err != nil {
		t.Fatal(err)
	}
	st, err := store.Open(filepath.Join(dir, "runtime.db"))
	if err != nil {
		t.Fatal(err)
	}
	netMgr, err := cnimgr.New(cnimgr.Config{ConfDir: filepath.Join(dir, "net.d"), CacheDir: filepath.Join(dir, "cni")})
	if err != nil {
		t.Fatal(err)
	}
	ports := portproxy.New()
	cfg := testConfig(dir)
	for _, o := range opts {
		o(&cfg)
	}
	c := New(context.Background(), cfg, Deps{Store: st, Snapshotter: sn, Network: netMgr, Ports: ports, Shims: shims})
	t.Cleanup(func() {
		// The shares are tmpfs mounts: gone before the temporary
		// directory is removed.
		ents, _ := os.ReadDir(c.cfg.StateDir)
		for _, e := range ents {
			removeSandboxFiles(filepath.Join(c.cfg.StateDir, e.Name()))
		}
		c.Close()
		ports.Close()
		st.Close()
		sn.Close()
	})
	return c, st
}

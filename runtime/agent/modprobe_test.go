package agent

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// writeIndex writes a module index (modules.dep, modules.alias and
// modules.devname, as build-guest restricts them) to a new directory.
func writeIndex(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	files := map[string]string{
		"modules.dep": "kernel/net/llc/llc.ko:\n" +
			"kernel/net/802/stp.ko: kernel/net/llc/llc.ko\n" +
			"kernel/net/bridge/bridge.ko: kernel/net/802/stp.ko kernel/net/llc/llc.ko\n" +
			"kernel/fs/fuse/fuse.ko:\n" +
			"kernel/fs/overlayfs/overlay.ko:\n" +
			"kernel/drivers/char/hw_random/virtio-rng.ko:\n" +
			"kernel/net/bridge/br_netfilter.ko: kernel/net/bridge/bridge.ko kernel/net/802/stp.ko kernel/net/llc/llc.ko kernel/missing/gone.ko\n",
		"modules.alias": "# Aliases extracted from modules themselves.\n" +
			"alias devname:fuse fuse\nalias char-major-10-229 fuse\nalias fs-fuse fuse\n" +
			"alias fs-overlay overlay\nalias rtnl-link-bridge bridge\n" +
			"alias virtio:d00000004v* virtio_rng\nalias fs-xfs xfs\nbogus line\n",
		"modules.devname": "# Device nodes to trigger on-demand module loading.\nfuse fuse c10:229\n",
	}
	for name, data := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// TestModprobeResolve: a request names a module by its name ('-' or
// '_'), an exact alias or an alias pattern; an alias of a module the
// index does not have, or no alias, is no module.
func TestModprobeResolve(t *testing.T) {
	ix, err := readModuleIndex(writeIndex(t))
	if err != nil {
		t.Fatal(err)
	}
	for req, want := range map[string]string{
		"bridge": "bridge", "rtnl-link-bridge": "bridge", "fs-overlay": "overlay",
		"char-major-10-229": "fuse", "fs-fuse": "fuse", "virtio-rng": "virtio_rng",
		"virtio:d00000004v00001AF4": "virtio_rng",
		"fs-xfs":                    "", "net-pf-10": "", "": "",
	} {
		got, ok := ix.resolve(req)
		if got != want || ok != (want != "") {
			t.Errorf("resolve(%q) = %q, %v; want %q", req, got, ok, want)
		}
	}
}

// TestModprobeLoad: the module loads after its dependencies (modules.dep's
// last first), each only when the kernel does not have it yet; a failure
// or a dependency the index lacks is an error naming it.
func TestModprobeLoad(t *testing.T) {
	dir := writeIndex(t)
	ix, err := readModuleIndex(dir)
	if err != nil {
		t.Fatal(err)
	}
	run := func(req string, have []string, fail string) ([]string, string, error) {
		var got []string
		name, err := ix.load(req, func(m string) bool { return slices.Contains(have, m) }, func(p string) error {
			if moduleName(p) == fail {
				return errors.New("exec format error")
			}
			if !strings.HasPrefix(p, dir+"/kernel/") {
				t.Errorf("loaded %s, outside the index's directory %s", p, dir)
			}
			got = append(got, moduleName(p))
			return nil
		})
		return got, name, err
	}
	got, name, err := run("rtnl-link-bridge", nil, "")
	if err != nil || name != "bridge" || !slices.Equal(got, []string{"llc", "stp", "bridge"}) {
		t.Errorf("bridge from nothing: loaded %v (%q, %v), want llc, stp, bridge", got, name, err)
	}
	if got, _, err := run("bridge", []string{"llc"}, ""); err != nil || !slices.Equal(got, []string{"stp", "bridge"}) {
		t.Errorf("bridge with llc in: loaded %v (%v), want stp, bridge", got, err)
	}
	if got, _, err := run("fs-overlay", []string{"overlay"}, ""); err != nil || len(got) != 0 {
		t.Errorf("overlay already in: loaded %v (%v), want nothing", got, err)
	}
	if _, _, err := run("bridge", nil, "stp"); err == nil {
		t.Error("a failed dependency: no error")
	}
	if _, _, err := run("br_netfilter", nil, ""); err == nil {
		t.Error("a dependency the index lacks: no error")
	}
	if _, _, err := run("fs-xfs", nil, ""); err == nil {
		t.Error("an unknown request: no error")
	}
	if _, err := readModuleIndex(t.TempDir()); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("no modules.dep: %v, want not-exist", err)
	}
}

// TestModprobeRequest: only the kernel's call shape is a request.
func TestModprobeRequest(t *testing.T) {
	if name, ok := ModprobeRequest([]string{"/init", "-q", "--", "fs-overlay"}); !ok || name != "fs-overlay" {
		t.Errorf("the kernel's call: %q, %v", name, ok)
	}
	for _, args := range [][]string{
		{"/init"}, {"/init", "--listen=serial:agent"}, {"/init", "-q", "--"},
		{"/init", "-q", "--", ""}, {"/init", "-q", "-x", "bridge"}, {"/init", "-q", "--", "a", "b"},
	} {
		if _, ok := ModprobeRequest(args); ok {
			t.Errorf("%q taken for a request", args)
		}
	}
}

// TestReadDevNames: modules.devname's nodes, relative to /dev and never
// out of it.
func TestReadDevNames(t *testing.T) {
	nodes, err := readDevNames(filepath.Join(writeIndex(t), "modules.devname"))
	if err != nil || len(nodes) != 1 || nodes[0] != (devNode{module: "fuse", name: "fuse", char: true, major: 10, minor: 229}) {
		t.Errorf("got %+v, %v", nodes, err)
	}
	if nodes, err := readDevNames(filepath.Join(t.TempDir(), "none")); err != nil || nodes != nil {
		t.Errorf("a missing file: %v, %v", nodes, err)
	}
	for _, bad := range []string{"fuse ../fuse c10:229", "fuse /dev/fuse c10:229", "fuse fuse x10:229", "fuse fuse c10", "fuse fuse c10:x", "fuse a/../../b c1:2"} {
		f := filepath.Join(t.TempDir(), "modules.devname")
		os.WriteFile(f, []byte(bad+"\n"), 0o644)
		if _, err := readDevNames(f); err == nil {
			t.Errorf("%q: no error", bad)
		}
	}
}

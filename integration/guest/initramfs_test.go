package guest

import (
	"os"
	"path/filepath"
	"testing"
)

// TestRestrictIndex: the guest's modules.alias and modules.devname keep
// only the lines of included modules (by module name, '-' as '_'), and a
// kernel without the file gives none.
func TestRestrictIndex(t *testing.T) {
	dir := t.TempDir()
	alias := filepath.Join(dir, "modules.alias")
	os.WriteFile(alias, []byte("# Aliases extracted from modules themselves.\n"+
		"alias fs-overlay overlay\nalias fs-xfs xfs\nalias virtio:d00000004v* virtio_rng\nalias rtnl-link-bridge bridge\n"), 0o644)
	devname := filepath.Join(dir, "modules.devname")
	os.WriteFile(devname, []byte("# Device nodes to trigger on-demand module loading.\nfuse fuse c10:229\nloop loop-control c10:237\n"), 0o644)
	included := map[string]bool{"overlay": true, "virtio_rng": true, "fuse": true}

	got, err := restrictIndex(alias, 2, included)
	if want := "alias fs-overlay overlay\nalias virtio:d00000004v* virtio_rng\n"; err != nil || string(got) != want {
		t.Errorf("modules.alias: %q, %v; want %q", got, err, want)
	}
	got, err = restrictIndex(devname, 0, included)
	if want := "fuse fuse c10:229\n"; err != nil || string(got) != want {
		t.Errorf("modules.devname: %q, %v; want %q", got, err, want)
	}
	if got, err := restrictIndex(filepath.Join(dir, "none"), 0, included); err != nil || got != nil {
		t.Errorf("a missing file: %q, %v; want none", got, err)
	}
	if got, err := restrictIndex(alias, 2, nil); err != nil || got == nil || len(got) != 0 {
		t.Errorf("nothing included: %q, %v; want an empty file", got, err)
	}
}

package agent

import (
	"slices"
	"testing"
)

const testMountinfo = `22 1 0:21 / / rw,relatime - rootfs rootfs rw
30 22 0:40 / /run/macvz/shared rw,relatime - 9p shared rw,trans=virtio
31 22 0:41 / /run/macvz/shared-ro ro,relatime - 9p shared-ro ro,trans=virtio
40 22 0:40 /c1/0 /data rw,relatime - 9p shared rw,trans=virtio
41 22 0:42 / /with\040space rw - 9p x rw
`

func TestMountinfoOthers(t *testing.T) {
	dev, others, found := mountinfoOthers(testMountinfo, "/run/macvz/shared")
	if !found || dev != "0:40" || !slices.Equal(others, []string{"/data"}) {
		t.Errorf("shared: %q %q %v", dev, others, found)
	}
	if _, others, found := mountinfoOthers(testMountinfo, "/run/macvz/shared-ro"); !found || len(others) != 0 {
		t.Errorf("shared-ro: %q %v", others, found)
	}
	if _, _, found := mountinfoOthers(testMountinfo, "/with space"); !found {
		t.Error("an escaped mount point is not found")
	}
	if _, _, found := mountinfoOthers(testMountinfo, "/nothing"); found {
		t.Error("found an unmounted target")
	}
}

func FuzzMountinfoOthers(f *testing.F) {
	f.Add(testMountinfo, "/run/macvz/shared")
	f.Fuzz(func(t *testing.T, info, target string) {
		mountinfoOthers(info, target)
	})
}

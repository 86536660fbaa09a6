package integration

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/macvz/macvz/integration/testimage"
	"github.com/macvz/macvz/integration/testregistry"
	"github.com/macvz/macvz/vmimage"
)

// TestPullUnpackLimit pulls decompression bombs through crictl from a
// daemon whose [image] max_unpacked_size is 4 MiB: a Tart image whose
// chunks announce 16 MiB (refused before its disk downloads) and a Linux
// image whose gzip disk announces nothing and decodes to 16 MiB (stopped
// while it decodes). Both fail with InvalidArgument naming the setting and
// leave no image, no blob and no base; a small image still pulls.
func TestPullUnpackLimit(t *testing.T) {
	requireCrictl(t)
	mk := built(t)
	reg := testregistry.Start(t, testregistry.Options{})

	bomb := func(c byte) []byte { return append(make([]byte, 8<<20), bytes.Repeat([]byte{c}, 8<<20)...) }
	tart := push(t, reg, "vm/tart-bomb", mk(testimage.Tart(testimage.TartOptions{Seed: 31, Disk: bomb(0x31), ChunkSize: 8 << 20})), "1")
	gz := mk(testimage.Linux(testimage.LinuxOptions{Kernel: []byte("kernel"), Disk: bomb(0x32), GzipDisk: true}))
	m := gz.Parsed()
	for i := range m.Layers {
		if m.Layers[i].MediaType == vmimage.MediaTypeLinuxDiskGzip {
			m.Layers[i].Annotations = nil
		}
	}
	linux := push(t, reg, "vm/linux-bomb", mk(testimage.FromManifest(m, gz.Blobs...)), "1")
	push(t, reg, "vm/small", mk(testimage.Linux(testimage.LinuxOptions{Kernel: []byte("kernel"), Disk: make([]byte, 1<<20)})), "1")

	d := startDaemon(t, fmt.Sprintf(`
[image]
max_unpacked_size = %d
[registry.hosts.%q]
insecure = true
`, 4<<20, reg.Host()))

	for repo, img := range map[string]testimage.Image{"vm/tart-bomb": tart, "vm/linux-bomb": linux} {
		d.wantFail("InvalidArgument", []string{"4 MiB limit ([image] max_unpacked_size)", "layer"}, "pull", reg.Ref(repo, "1"))
		if imgs := d.images(); len(imgs) != 0 {
			t.Errorf("%s: images listed after the refused pull: %+v", repo, imgs)
		}
		for _, b := range img.Blobs {
			if blobExists(d.root(), b.Desc.Digest.Encoded()) {
				t.Errorf("%s: blob %s (%s) kept", repo, b.Desc.Digest, b.Desc.MediaType)
			}
		}
		if hasBase(d.root(), img.Manifest.Digest.Encoded()) {
			t.Errorf("%s: a base is left in the snapshotter", repo)
		}
		// No snapshot at all: no half-unpacked extraction either.
		if left, _ := os.ReadDir(filepath.Join(d.root(), "snapshots", "snapshots")); len(left) != 0 {
			t.Errorf("%s: snapshot directories left: %v", repo, left)
		}
	}
	if n := reg.Requests(tart.Parsed().Layers[1].Digest); n != 0 {
		t.Errorf("the Tart bomb's first chunk was fetched %d times; its declared size is over the cap", n)
	}
	d.mustCrictl("pull", reg.Ref("vm/small", "1"))
}

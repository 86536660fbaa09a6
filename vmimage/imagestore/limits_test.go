package imagestore_test

import (
	"bytes"
	"context"
	"testing"

	"github.com/containerd/errdefs"

	"github.com/macvz/macvz/integration/testimage"
	"github.com/macvz/macvz/integration/testregistry"
	"github.com/macvz/macvz/vmimage"
	"github.com/macvz/macvz/vmimage/imagestore"
)

// bombDisk is size bytes that compress to almost nothing: zeros, then
// one repeating non-zero byte c (each image its own, so that no two share
// a blob).
func bombDisk(size int, c byte) []byte {
	return append(make([]byte, size/2), bytes.Repeat([]byte{c}, size-size/2)...)
}

// bombImages are small images that unpack to 16 MiB. declared tells
// whether their manifest announces that size.
func bombImages(t testing.TB) map[string]struct {
	img      testimage.Image
	declared bool
} {
	t.Helper()
	must := func(img testimage.Image, err error) testimage.Image {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		return img
	}
	const size = 16 << 20
	linux := must(testimage.Linux(testimage.LinuxOptions{Kernel: []byte("k"), Disk: bombDisk(size, 1), GzipDisk: true}))
	m := linux.Parsed()
	for i := range m.Layers {
		if m.Layers[i].MediaType == vmimage.MediaTypeLinuxDiskGzip {
			m.Layers[i].Annotations = nil
		}
	}
	noSize := must(testimage.FromManifest(m, linux.Blobs...))
	return map[string]struct {
		img      testimage.Image
		declared bool
	}{
		"tart":               {must(testimage.Tart(testimage.TartOptions{Seed: 9, Disk: bombDisk(size, 2), ChunkSize: 8 << 20})), true},
		"agoda-gzip":         {must(testimage.Agoda(testimage.AgodaOptions{Seed: 9, Disk: bombDisk(size, 3)})), true},
		"linux-gzip-no-size": {noSize, false},
	}
}

// A pull of an image that unpacks to more than the cap fails with a clear
// error and keeps nothing: no image, no blob, no half-unpacked base. An
// image that says so in its manifest is refused before its layers
// download.
func TestPullDecompressionBombs(t *testing.T) {
	reg := testregistry.Start(t, testregistry.Options{})
	for name, tc := range bombImages(t) {
		t.Run(name, func(t *testing.T) {
			push(t, reg, "bomb-"+name, "v1", tc.img)
			s := newStore(t, insecure(reg.Host()), func(o *imagestore.Options) { o.MaxUnpackedSize = 4 << 20 })
			_, err := s.Pull(context.Background(), reg.Ref("bomb-"+name, "v1"), nil)
			t.Log(err)
			wantClass(t, err, "InvalidArgument", errdefs.IsInvalidArgument, "4 MiB limit ([image] max_unpacked_size)", "layer")
			assertEmpty(t, s, tc.img)
			if tc.declared {
				for _, l := range tc.img.Parsed().Layers {
					if n := reg.Requests(l.Digest); n != 0 {
						t.Errorf("layer %s (%s) was fetched %d times", l.Digest, l.MediaType, n)
					}
				}
			}
			// Under the default cap the same image pulls.
			s = newStore(t, insecure(reg.Host()))
			mustPull(t, s, reg.Ref("bomb-"+name, "v1"), nil)
		})
	}
}

func TestPullFreeSpace(t *testing.T) {
	reg := testregistry.Start(t, testregistry.Options{})
	for name, tc := range bombImages(t) {
		t.Run(name, func(t *testing.T) {
			push(t, reg, "space-"+name, "v1", tc.img)

			// Not enough space to start (the checks while unpacking are
			// tested in package vmimage).
			s := newStore(t, insecure(reg.Host()), func(o *imagestore.Options) {
				o.FreeSpace = func(string) (uint64, uint64, error) { return 1 << 30, 100 << 30, nil }
			})
			_, err := s.Pull(context.Background(), reg.Ref("space-"+name, "v1"), nil)
			wantClass(t, err, "ResourceExhausted", errdefs.IsResourceExhausted, "not enough free space on "+s.root)
			assertEmpty(t, s, tc.img)

		})
	}
}

package testimage

import (
	"bytes"
	"encoding/json"
	"testing"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

func builders() map[string]func(seed uint64) (Image, error) {
	return map[string]func(seed uint64) (Image, error){
		"oci": func(s uint64) (Image, error) {
			return OCI(OCIOptions{Seed: s, User: "1000", Cmd: []string{"/bin/sh"}, RandomLayerSize: 1000})
		},
		"tart": func(s uint64) (Image, error) {
			return Tart(TartOptions{Seed: s, DiskSize: 3 << 20, ChunkSize: 1 << 20})
		},
		"agoda": func(s uint64) (Image, error) { return Agoda(AgodaOptions{Seed: s, DiskSize: 1 << 20}) },
		"linux": func(s uint64) (Image, error) {
			return Linux(LinuxOptions{Kernel: []byte("k"), Initrd: []byte("i"), Disk: DiskPattern(s, 1<<20), GzipDisk: true})
		},
	}
}

func TestDeterministicAndConsistent(t *testing.T) {
	for name, build := range builders() {
		a, err := build(1)
		if err != nil {
			t.Fatal(name, err)
		}
		b, err := build(1)
		if err != nil {
			t.Fatal(name, err)
		}
		if a.Manifest.Digest != b.Manifest.Digest {
			t.Errorf("%s: two builds from one seed differ", name)
		}
		var m ocispec.Manifest
		if err := json.Unmarshal(a.ManifestData, &m); err != nil {
			t.Fatal(err)
		}
		have := map[digest.Digest][]byte{}
		for _, bl := range a.Blobs {
			if digest.FromBytes(bl.Data) != bl.Desc.Digest || int64(len(bl.Data)) != bl.Desc.Size {
				t.Errorf("%s: blob %s does not match its descriptor", name, bl.Desc.Digest)
			}
			have[bl.Desc.Digest] = bl.Data
		}
		for _, d := range append([]ocispec.Descriptor{m.Config}, m.Layers...) {
			if _, ok := have[d.Digest]; !ok {
				t.Errorf("%s: manifest references missing blob %s", name, d.Digest)
			}
		}
	}
}

func TestDiskPattern(t *testing.T) {
	a := DiskPattern(5, 9<<20+1)
	if !bytes.Equal(a, DiskPattern(5, 9<<20+1)) || bytes.Equal(a, DiskPattern(6, 9<<20+1)) {
		t.Fatal("pattern not a function of its seed")
	}
	zero := 0
	for i := 0; i+4096 <= len(a); i += 4096 {
		if bytes.Equal(a[i:i+4096], make([]byte, 4096)) {
			zero++
		}
	}
	if f := float64(zero*4096) / float64(len(a)); f < 0.2 || f > 0.6 {
		t.Fatalf("%.2f of the disk is zero pages", f)
	}
}

// Command pushimage pushes a generated test image to a registry, for
// `make demo` and manual testing:
//
//	pushimage -registry 127.0.0.1:5000 -kind tart -repo demo/macos -tag 15
//
// Kinds: oci (an ordinary container image), tart (a Tart VM image with
// Apple-LZ4 disk chunks), agoda (a macOS-vz-kubelet image), layout (every
// tagged image of an OCI image layout directory given with -layout, each
// pushed as -repo:<its ref name>).
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"path/filepath"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/macvz/macvz/integration/testimage"
	"github.com/macvz/macvz/integration/testregistry"
)

func main() {
	reg := flag.String("registry", "127.0.0.1:5000", "registry host:port (plain HTTP)")
	kind := flag.String("kind", "oci", "oci, tart, agoda or layout")
	repo := flag.String("repo", "demo/app", "repository")
	tag := flag.String("tag", "latest", "tag (not used for layout)")
	layout := flag.String("layout", "", "OCI image layout directory (kind layout)")
	diskMiB := flag.Int64("disk-mib", 64, "VM disk size in MiB (tart, agoda)")
	flag.Parse()

	if err := run(*reg, *kind, *repo, *tag, *layout, *diskMiB<<20); err != nil {
		fmt.Fprintln(os.Stderr, "pushimage:", err)
		os.Exit(1)
	}
}

func run(reg, kind, repo, tag, layout string, disk int64) error {
	r := testregistry.Remote(reg)
	ctx := context.Background()
	push := func(tag string, img testimage.Image, err error) error {
		if err != nil {
			return err
		}
		if err := r.Push(ctx, repo, tag, img); err != nil {
			return err
		}
		fmt.Printf("pushed %s/%s:%s (%s)\n", reg, repo, tag, img.Manifest.Digest)
		return nil
	}
	switch kind {
	case "oci":
		img, err := testimage.OCI(testimage.OCIOptions{Seed: 1})
		return push(tag, img, err)
	case "tart":
		img, err := testimage.Tart(testimage.TartOptions{Seed: 1, DiskSize: disk, ChunkSize: 16 << 20})
		return push(tag, img, err)
	case "agoda":
		img, err := testimage.Agoda(testimage.AgodaOptions{Seed: 1, DiskSize: disk})
		return push(tag, img, err)
	case "layout":
		imgs, err := readLayout(layout)
		if err != nil {
			return err
		}
		for name, img := range imgs {
			if err := push(name, img, nil); err != nil {
				return err
			}
		}
		return nil
	}
	return fmt.Errorf("unknown kind %q", kind)
}

// readLayout reads every image of an OCI image layout that carries an
// org.opencontainers.image.ref.name, keyed by that name.
func readLayout(dir string) (map[string]testimage.Image, error) {
	var idx ocispec.Index
	b, err := os.ReadFile(filepath.Join(dir, "index.json"))
	if err != nil {
		return nil, err
	}
	if err := json.Unmarshal(b, &idx); err != nil {
		return nil, fmt.Errorf("%s/index.json: %w", dir, err)
	}
	blob := func(d digest.Digest) ([]byte, error) {
		return os.ReadFile(filepath.Join(dir, "blobs", d.Algorithm().String(), d.Encoded()))
	}
	out := map[string]testimage.Image{}
	for _, desc := range idx.Manifests {
		name := desc.Annotations[ocispec.AnnotationRefName]
		if name == "" {
			continue
		}
		mb, err := blob(desc.Digest)
		if err != nil {
			return nil, err
		}
		var m ocispec.Manifest
		if err := json.Unmarshal(mb, &m); err != nil {
			return nil, err
		}
		img := testimage.Image{Manifest: ocispec.Descriptor{MediaType: desc.MediaType, Digest: desc.Digest, Size: desc.Size}, ManifestData: mb}
		for _, d := range append([]ocispec.Descriptor{m.Config}, m.Layers...) {
			data, err := blob(d.Digest)
			if err != nil {
				return nil, err
			}
			img.Blobs = append(img.Blobs, testimage.Blob{Desc: d, Data: data})
		}
		out[name] = img
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("%s: no image has an %s annotation", dir, ocispec.AnnotationRefName)
	}
	return out, nil
}

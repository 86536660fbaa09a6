package testimage

import (
	"encoding/json"
	"os"
	"path/filepath"
	"sort"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// WriteLayout writes images into dir as an OCI image layout (oci-layout,
// index.json, blobs/sha256/...), each listed in the index under its
// name (the org.opencontainers.image.ref.name annotation), the way
// `skopeo copy ... oci:DIR:NAME` or BuildKit's OCI exporter leave one.
func WriteLayout(dir string, images map[string]Image) error {
	blobDir := filepath.Join(dir, ocispec.ImageBlobsDir, "sha256")
	if err := os.MkdirAll(blobDir, 0o755); err != nil {
		return err
	}
	write := func(name string, b []byte) error {
		return os.WriteFile(name, b, 0o644)
	}
	idx := ocispec.Index{MediaType: ocispec.MediaTypeImageIndex}
	idx.SchemaVersion = 2
	names := make([]string, 0, len(images))
	for n := range images {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		img := images[n]
		for _, b := range img.Blobs {
			if err := write(filepath.Join(blobDir, b.Desc.Digest.Encoded()), b.Data); err != nil {
				return err
			}
		}
		if err := write(filepath.Join(blobDir, img.Manifest.Digest.Encoded()), img.ManifestData); err != nil {
			return err
		}
		d := img.Manifest
		d.Annotations = map[string]string{ocispec.AnnotationRefName: n}
		idx.Manifests = append(idx.Manifests, d)
	}
	ib, err := json.Marshal(idx)
	if err != nil {
		return err
	}
	lb, err := json.Marshal(ocispec.ImageLayout{Version: ocispec.ImageLayoutVersion})
	if err != nil {
		return err
	}
	if err := write(filepath.Join(dir, ocispec.ImageIndexFile), ib); err != nil {
		return err
	}
	return write(filepath.Join(dir, ocispec.ImageLayoutFile), lb)
}

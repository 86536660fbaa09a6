package guest

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sort"

	"github.com/opencontainers/go-digest"
	specs "github.com/opencontainers/image-spec/specs-go"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/macvz/macvz/integration/testimage"
	"github.com/macvz/macvz/internal/atomicfile"
)

// AnnotationKernelVersion, on the layout's index entries, is the guest's
// kernel release.
const AnnotationKernelVersion = "io.macvz.guest.kernel-version"

func blobPath(layout string, d digest.Digest) string {
	return filepath.Join(layout, ocispec.ImageBlobsDir, d.Algorithm().String(), d.Encoded())
}

// WriteLayout writes images as an OCI image layout (image-spec
// image-layout.md) in dir: oci-layout, index.json listing each image's
// manifest with its tag in org.opencontainers.image.ref.name (plus
// annotations), and blobs/sha256/<hex>. Blobs already present are kept;
// blobs no image references any more are removed.
func WriteLayout(dir string, images map[string]testimage.Image, annotations map[string]string) error {
	if err := os.MkdirAll(filepath.Join(dir, ocispec.ImageBlobsDir, "sha256"), 0o755); err != nil {
		return err
	}
	keep := map[string]bool{}
	put := func(d digest.Digest, data []byte) error {
		if d.Algorithm() != digest.SHA256 {
			return fmt.Errorf("blob %s: only sha256 digests are written", d)
		}
		if digest.FromBytes(data) != d {
			return fmt.Errorf("blob %s: content does not match the digest", d)
		}
		p := blobPath(dir, d)
		keep[filepath.Base(p)] = true
		if fi, err := os.Stat(p); err == nil && fi.Size() == int64(len(data)) {
			return nil
		}
		return atomicfile.WriteFile(p, data, 0o644)
	}
	refs := make([]string, 0, len(images))
	for ref := range images {
		refs = append(refs, ref)
	}
	sort.Strings(refs)
	index := ocispec.Index{
		Versioned: specs.Versioned{SchemaVersion: 2},
		MediaType: ocispec.MediaTypeImageIndex,
	}
	for _, ref := range refs {
		img := images[ref]
		for _, b := range img.Blobs {
			if err := put(b.Desc.Digest, b.Data); err != nil {
				return err
			}
		}
		if err := put(img.Manifest.Digest, img.ManifestData); err != nil {
			return err
		}
		desc := img.Manifest
		desc.ArtifactType = img.Parsed().ArtifactType
		desc.Annotations = map[string]string{ocispec.AnnotationRefName: ref}
		for k, v := range annotations {
			desc.Annotations[k] = v
		}
		index.Manifests = append(index.Manifests, desc)
	}
	ib, err := json.MarshalIndent(index, "", "  ")
	if err != nil {
		return err
	}
	lb, _ := json.Marshal(ocispec.ImageLayout{Version: ocispec.ImageLayoutVersion})
	if err := atomicfile.WriteFile(filepath.Join(dir, ocispec.ImageLayoutFile), lb, 0o644); err != nil {
		return err
	}
	if err := atomicfile.WriteFile(filepath.Join(dir, ocispec.ImageIndexFile), append(ib, '\n'), 0o644); err != nil {
		return err
	}
	old, _ := os.ReadDir(filepath.Join(dir, ocispec.ImageBlobsDir, "sha256"))
	for _, e := range old {
		if !keep[e.Name()] {
			os.Remove(filepath.Join(dir, ocispec.ImageBlobsDir, "sha256", e.Name()))
		}
	}
	return nil
}

// Load reads an OCI image layout back: every manifest of index.json that
// has an org.opencontainers.image.ref.name, by that name, with its config
// and layers, ready for testregistry's Push. dir is the layout, or a
// Build output directory (whose layout is dir/oci). Every blob is checked
// against its digest.
func Load(dir string) (map[string]testimage.Image, error) {
	if _, err := os.Stat(filepath.Join(dir, ocispec.ImageLayoutFile)); err != nil {
		if _, err2 := os.Stat(filepath.Join(dir, "oci", ocispec.ImageLayoutFile)); err2 == nil {
			dir = filepath.Join(dir, "oci")
		} else {
			return nil, fmt.Errorf("%s is not an OCI image layout: %w", dir, err)
		}
	}
	var layout ocispec.ImageLayout
	if err := readJSON(filepath.Join(dir, ocispec.ImageLayoutFile), &layout); err != nil {
		return nil, err
	}
	if layout.Version != ocispec.ImageLayoutVersion {
		return nil, fmt.Errorf("%s: imageLayoutVersion %q, want %q", dir, layout.Version, ocispec.ImageLayoutVersion)
	}
	var index ocispec.Index
	if err := readJSON(filepath.Join(dir, ocispec.ImageIndexFile), &index); err != nil {
		return nil, err
	}
	blobs := map[digest.Digest][]byte{} // the tags share their layers
	read := func(d ocispec.Descriptor) ([]byte, error) {
		if b, ok := blobs[d.Digest]; ok {
			return b, nil
		}
		if err := d.Digest.Validate(); err != nil {
			return nil, fmt.Errorf("%s: %w", dir, err)
		}
		b, err := os.ReadFile(blobPath(dir, d.Digest))
		if err != nil {
			return nil, err
		}
		if int64(len(b)) != d.Size || digest.FromBytes(b) != d.Digest {
			return nil, fmt.Errorf("%s: blob %s does not match its descriptor (size %d, want %d)", dir, d.Digest, len(b), d.Size)
		}
		blobs[d.Digest] = b
		return b, nil
	}
	out := map[string]testimage.Image{}
	for _, md := range index.Manifests {
		ref := md.Annotations[ocispec.AnnotationRefName]
		if ref == "" {
			continue
		}
		if md.MediaType != ocispec.MediaTypeImageManifest {
			return nil, fmt.Errorf("%s: %s: media type %s, want an image manifest", dir, ref, md.MediaType)
		}
		mb, err := read(md)
		if err != nil {
			return nil, err
		}
		var m ocispec.Manifest
		if err := json.Unmarshal(mb, &m); err != nil {
			return nil, fmt.Errorf("%s: manifest of %s: %w", dir, ref, err)
		}
		img := testimage.Image{
			Manifest:     ocispec.Descriptor{MediaType: md.MediaType, Digest: md.Digest, Size: md.Size},
			ManifestData: mb,
		}
		for _, d := range append([]ocispec.Descriptor{m.Config}, m.Layers...) {
			b, err := read(d)
			if err != nil {
				return nil, err
			}
			img.Blobs = append(img.Blobs, testimage.Blob{Desc: d, Data: b})
		}
		out[ref] = img
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("%s: index.json names no image (org.opencontainers.image.ref.name)", dir)
	}
	return out, nil
}

func readJSON(p string, v any) error {
	b, err := os.ReadFile(p)
	if err != nil {
		return err
	}
	if err := json.Unmarshal(b, v); err != nil {
		return fmt.Errorf("%s: %w", p, err)
	}
	return nil
}

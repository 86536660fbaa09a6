// Package testimage holds images built in memory for tests, benchmarks and
// the demo, in a form the test registry can push as-is.
package testimage

import (
	"encoding/json"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// Blob is one blob with its descriptor. Data holds exactly the bytes the
// registry serves; a test may make them disagree with Desc on purpose.
type Blob struct {
	Desc ocispec.Descriptor
	Data []byte
}

// Image is a manifest and every blob it references (config and layers).
type Image struct {
	Manifest     ocispec.Descriptor // media type, digest and size of ManifestData
	ManifestData []byte
	Blobs        []Blob
}

// NewBlob describes data with the given media type.
func NewBlob(mediaType string, data []byte, annotations map[string]string) Blob {
	return Blob{
		Desc: ocispec.Descriptor{
			MediaType:   mediaType,
			Digest:      digest.FromBytes(data),
			Size:        int64(len(data)),
			Annotations: annotations,
		},
		Data: data,
	}
}

// FromManifest marshals m and bundles it with its blobs.
func FromManifest(m ocispec.Manifest, blobs ...Blob) (Image, error) {
	if m.SchemaVersion == 0 {
		m.SchemaVersion = 2
	}
	if m.MediaType == "" {
		m.MediaType = ocispec.MediaTypeImageManifest
	}
	b, err := json.Marshal(m)
	if err != nil {
		return Image{}, err
	}
	return Image{
		Manifest: ocispec.Descriptor{
			MediaType: m.MediaType,
			Digest:    digest.FromBytes(b),
			Size:      int64(len(b)),
		},
		ManifestData: b,
		Blobs:        blobs,
	}, nil
}

// Parsed is the image's manifest decoded; it panics on a manifest the
// builders did not make, which is a bug in the test.
func (i Image) Parsed() ocispec.Manifest {
	var m ocispec.Manifest
	if err := json.Unmarshal(i.ManifestData, &m); err != nil {
		panic(err)
	}
	return m
}

// ConfigDigest is the image ID a CRI runtime reports for the image.
func (i Image) ConfigDigest() digest.Digest { return i.Parsed().Config.Digest }

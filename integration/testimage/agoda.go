package testimage

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"strconv"

	"github.com/klauspost/compress/gzip"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/macvz/macvz/vmimage"
)

// AgodaOptions describe a macOS-vz-kubelet image.
type AgodaOptions struct {
	Seed     uint64
	Disk     []byte // default DiskPattern(Seed, DiskSize)
	DiskSize int64  // default 8 MiB
	Aux      []byte // default 1 MiB, mostly zeros, derived from Seed
	// Uncompressed stores disk and aux as-is, without the uncompressed-*
	// annotations, which macOS-vz-kubelet also accepts.
	Uncompressed bool
	// BadDigest makes the disk's uncompressed-digest annotation wrong.
	BadDigest                bool
	HardwareModel, MachineID []byte // default: derived from Seed
}

// Agoda builds an image the way macOS-vz-kubelet pushes one (pkg/oci in
// github.com/agoda-com/macOS-vz-kubelet, example/oci_manifest.json): an
// artifact manifest with the empty config, gzip-compressed disk and aux
// layers annotated with their uncompressed size and digest, and the JSON
// config layer.
func Agoda(o AgodaOptions) (Image, error) {
	if o.DiskSize == 0 {
		o.DiskSize = 8 << 20
	}
	if o.Disk == nil {
		o.Disk = DiskPattern(o.Seed, o.DiskSize)
	}
	if o.Aux == nil {
		o.Aux = make([]byte, 1<<20)
		copy(o.Aux[4096:], randomBytes(o.Seed, 5, 8192))
	}
	hw, id := o.HardwareModel, o.MachineID
	if hw == nil {
		hw = append([]byte("bplist00"), randomBytes(o.Seed, 2, 100)...)
	}
	if id == nil {
		id = append([]byte("bplist00"), randomBytes(o.Seed, 3, 40)...)
	}
	storage := func(mediaType string, data []byte, title string, bad bool) (Blob, error) {
		ann := map[string]string{ocispec.AnnotationTitle: title}
		if o.Uncompressed {
			return NewBlob(mediaType, data, ann), nil
		}
		var buf bytes.Buffer
		zw, err := gzip.NewWriterLevel(&buf, gzip.BestSpeed)
		if err != nil {
			return Blob{}, err
		}
		if _, err := zw.Write(data); err != nil {
			return Blob{}, err
		}
		if err := zw.Close(); err != nil {
			return Blob{}, err
		}
		d := digest.FromBytes(data)
		if bad {
			d = digest.FromString("something else")
		}
		ann[vmimage.AnnotationAgodaUncompressedSize] = strconv.Itoa(len(data))
		ann[vmimage.AnnotationAgodaUncompressedDigest] = d.String()
		return NewBlob(mediaType, buf.Bytes(), ann), nil
	}
	disk, err := storage(vmimage.MediaTypeAgodaDisk, o.Disk, "disk.img", o.BadDigest)
	if err != nil {
		return Image{}, err
	}
	aux, err := storage(vmimage.MediaTypeAgodaAux, o.Aux, "aux.img", false)
	if err != nil {
		return Image{}, err
	}
	// pkg/oci/config.go: Config.MarshalJSON.
	cfgJSON, err := json.Marshal(map[string]any{
		"mediatype":         vmimage.MediaTypeAgodaConfig,
		"os":                "darwin",
		"hardwareModelData": base64.StdEncoding.EncodeToString(hw),
		"machineIdData":     base64.StdEncoding.EncodeToString(id),
		"storage": []map[string]string{
			{"mediatype": vmimage.MediaTypeAgodaAux, "file": "aux.img"},
			{"mediatype": vmimage.MediaTypeAgodaDisk, "file": "disk.img"},
		},
	})
	if err != nil {
		return Image{}, err
	}
	cfg := NewBlob(vmimage.MediaTypeAgodaConfig, cfgJSON, map[string]string{ocispec.AnnotationTitle: "config.json"})
	empty := NewBlob(ocispec.MediaTypeEmptyJSON, []byte("{}"), nil)
	empty.Desc.Platform = &ocispec.Platform{Architecture: "arm64", OS: "darwin"}
	layers := []Blob{disk, aux, cfg}
	m := ocispec.Manifest{
		ArtifactType: vmimage.ArtifactTypeAgoda,
		Config:       empty.Desc,
		Layers:       descs(layers),
		Annotations:  map[string]string{ocispec.AnnotationCreated: "2025-01-01T00:00:00Z"},
	}
	return FromManifest(m, uniqueBlobs(append([]Blob{empty}, layers...))...)
}

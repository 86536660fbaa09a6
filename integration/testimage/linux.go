package testimage

import (
	"bytes"
	"encoding/json"
	"strconv"

	"github.com/klauspost/compress/gzip"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/macvz/macvz/vmimage"
)

// LinuxOptions describe an image of macvz's Linux-guest format.
type LinuxOptions struct {
	Kernel []byte // required
	Initrd []byte // optional
	Disk   []byte // optional
	// GzipDisk stores the disk gzip-compressed, annotated with its
	// uncompressed size and digest.
	GzipDisk bool

	Arch           string // default amd64
	MinCPUs        int
	MinMemoryBytes int64
	KernelCmdline  string
	Process        *vmimage.Process
	// Annotations go on the manifest (e.g. what the image is: the node
	// image's kind and kubelet version).
	Annotations map[string]string
}

// Linux builds an image of macvz's Linux-guest format (vmimage/linux.go).
func Linux(o LinuxOptions) (Image, error) {
	if o.Arch == "" {
		o.Arch = "amd64"
	}
	cfgJSON, err := json.Marshal(vmimage.LinuxConfig{
		OS:             "linux",
		Arch:           o.Arch,
		MinCPUs:        o.MinCPUs,
		MinMemoryBytes: o.MinMemoryBytes,
		KernelCmdline:  o.KernelCmdline,
		Process:        o.Process,
	})
	if err != nil {
		return Image{}, err
	}
	cfg := NewBlob(vmimage.MediaTypeLinuxConfig, cfgJSON, nil)
	layers := []Blob{NewBlob(vmimage.MediaTypeLinuxKernel, o.Kernel, nil)}
	if o.Initrd != nil {
		layers = append(layers, NewBlob(vmimage.MediaTypeLinuxInitrd, o.Initrd, nil))
	}
	if o.Disk != nil {
		if o.GzipDisk {
			var buf bytes.Buffer
			zw, _ := gzip.NewWriterLevel(&buf, gzip.BestSpeed)
			zw.Write(o.Disk)
			if err := zw.Close(); err != nil {
				return Image{}, err
			}
			layers = append(layers, NewBlob(vmimage.MediaTypeLinuxDiskGzip, buf.Bytes(), map[string]string{
				vmimage.AnnotationLinuxUncompressedSize:   strconv.Itoa(len(o.Disk)),
				vmimage.AnnotationLinuxUncompressedDigest: digest.FromBytes(o.Disk).String(),
			}))
		} else {
			layers = append(layers, NewBlob(vmimage.MediaTypeLinuxDisk, o.Disk, nil))
		}
	}
	m := ocispec.Manifest{
		ArtifactType: vmimage.MediaTypeLinuxConfig,
		Config:       cfg.Desc,
		Layers:       descs(layers),
		Annotations:  o.Annotations,
	}
	return FromManifest(m, uniqueBlobs(append([]Blob{cfg}, layers...))...)
}

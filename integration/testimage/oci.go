package testimage

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"encoding/json"
	"path"
	"sort"
	"strings"
	"time"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// File is one entry of a layer: a regular file, or a directory when Dir
// is set, or a symbolic link when Link is set.
type File struct {
	Path string // absolute or relative to /
	Mode int64  // default 0644, 0755 for directories
	Data []byte
	Dir  bool
	Link string
}

// OCIOptions describe an ordinary OCI container image.
type OCIOptions struct {
	Seed     uint64
	OS, Arch string // default linux, amd64

	User       string
	Entrypoint []string
	Cmd        []string
	Env        []string
	WorkingDir string

	// Layers holds each layer's files; nil means one layer with
	// /etc/passwd, /etc/group and /hello.txt.
	Layers [][]File
	// RandomLayerSize, when set, adds a layer holding one file of that
	// many random bytes (from Seed).
	RandomLayerSize int
}

// epoch is every image's creation time and every file's mtime, so that
// builds are reproducible.
var epoch = time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)

// OCI builds an OCI image: gzip-compressed tar layers and an image
// config whose rootfs lists their diff IDs.
func OCI(o OCIOptions) (Image, error) {
	if o.OS == "" {
		o.OS = "linux"
	}
	if o.Arch == "" {
		o.Arch = "amd64"
	}
	layers := o.Layers
	if layers == nil {
		layers = [][]File{{
			{Path: "/etc/passwd", Data: []byte("root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\nuser:x:1000:1000:user:/home/user:/bin/sh\n")},
			{Path: "/etc/group", Data: []byte("root:x:0:\nnogroup:x:65534:\nuser:x:1000:\n")},
			{Path: "/hello.txt", Data: []byte("hello from a macvz test image\n")},
		}}
	}
	if o.RandomLayerSize > 0 {
		layers = append(layers, []File{{Path: "/random.bin", Data: randomBytes(o.Seed, 6, o.RandomLayerSize)}})
	}
	var blobs []Blob
	var diffIDs []digest.Digest
	var history []ocispec.History
	for _, files := range layers {
		tarball, err := tarFiles(files)
		if err != nil {
			return Image{}, err
		}
		var gz bytes.Buffer
		zw := gzip.NewWriter(&gz)
		zw.ModTime = time.Time{}
		if _, err := zw.Write(tarball); err != nil {
			return Image{}, err
		}
		if err := zw.Close(); err != nil {
			return Image{}, err
		}
		blobs = append(blobs, NewBlob(ocispec.MediaTypeImageLayerGzip, gz.Bytes(), nil))
		diffIDs = append(diffIDs, digest.FromBytes(tarball))
		history = append(history, ocispec.History{Created: &epoch, CreatedBy: "macvz testimage"})
	}
	img := ocispec.Image{
		Created:  &epoch,
		Platform: ocispec.Platform{Architecture: o.Arch, OS: o.OS},
		Config: ocispec.ImageConfig{
			User:       o.User,
			Entrypoint: o.Entrypoint,
			Cmd:        o.Cmd,
			Env:        o.Env,
			WorkingDir: o.WorkingDir,
		},
		RootFS:  ocispec.RootFS{Type: "layers", DiffIDs: diffIDs},
		History: history,
	}
	cfgJSON, err := json.Marshal(img)
	if err != nil {
		return Image{}, err
	}
	cfg := NewBlob(ocispec.MediaTypeImageConfig, cfgJSON, nil)
	m := ocispec.Manifest{Config: cfg.Desc, Layers: descs(blobs)}
	return FromManifest(m, uniqueBlobs(append([]Blob{cfg}, blobs...))...)
}

// tarFiles writes files, with their parent directories, as a tar stream.
func tarFiles(files []File) ([]byte, error) {
	entries := map[string]File{}
	for _, f := range files {
		p := strings.TrimPrefix(path.Clean("/"+f.Path), "/")
		entries[p] = f
		for d := path.Dir(p); d != "." && d != "/"; d = path.Dir(d) {
			if _, ok := entries[d]; !ok {
				entries[d] = File{Dir: true}
			}
		}
	}
	names := make([]string, 0, len(entries))
	for n := range entries {
		names = append(names, n)
	}
	sort.Strings(names) // parents sort before their children
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, n := range names {
		f := entries[n]
		h := &tar.Header{Name: n, ModTime: epoch, Mode: f.Mode, Format: tar.FormatPAX}
		switch {
		case f.Dir:
			h.Typeflag, h.Name = tar.TypeDir, n+"/"
			if h.Mode == 0 {
				h.Mode = 0o755
			}
		case f.Link != "":
			h.Typeflag, h.Linkname = tar.TypeSymlink, f.Link
			if h.Mode == 0 {
				h.Mode = 0o777
			}
		default:
			h.Typeflag, h.Size = tar.TypeReg, int64(len(f.Data))
			if h.Mode == 0 {
				h.Mode = 0o644
			}
		}
		if err := tw.WriteHeader(h); err != nil {
			return nil, err
		}
		if _, err := tw.Write(f.Data); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

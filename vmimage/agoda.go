package vmimage

import (
	"context"
	"encoding/json"
	"fmt"
	"io"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// macOS-vz-kubelet images (github.com/agoda-com/macOS-vz-kubelet). Facts
// from its pkg/oci (mediatype.go, config.go, oci.go, oci_descriptor.go,
// oci_processor.go), internal/disk/compression.go and
// example/oci_manifest.json:
//
//   - The manifest has artifactType application/vnd.agoda.macosvz.artifact
//     and the empty config (application/vnd.oci.empty.v1+json, "{}"),
//     whose descriptor carries platform darwin/arm64.
//   - Layers: the disk (title disk.img), the auxiliary storage (aux.img)
//     and a JSON config layer (config.json).
//   - A layer with both annotations uncompressed-size and
//     uncompressed-digest is gzip-compressed (written by pgzip) and the
//     annotations describe its decompressed content; a layer without them
//     is stored as-is. The pusher compresses both the disk and aux.
//   - The config layer: {"mediatype", "os": "darwin", "hardwareModelData",
//     "machineIdData" (both base64 of the Virtualization framework's
//     dataRepresentation), "storage": [{"mediatype", "file"}]}. It names
//     no CPU or memory size: those come from the pod.
const (
	ArtifactTypeAgoda    = "application/vnd.agoda.macosvz.artifact"
	MediaTypeAgodaDisk   = "application/vnd.agoda.macosvz.disk.image.v1"
	MediaTypeAgodaAux    = "application/vnd.agoda.macosvz.aux.image.v1"
	MediaTypeAgodaConfig = "application/vnd.agoda.macosvz.config.v1+json"

	AnnotationAgodaUncompressedSize   = "com.agoda.macosvz.content.uncompressed-size"
	AnnotationAgodaUncompressedDigest = "com.agoda.macosvz.content.uncompressed-digest"
)

// AgodaFormat is the macOS-vz-kubelet image format.
type AgodaFormat struct{}

func (AgodaFormat) Kind() Kind { return KindAgoda }

func (AgodaFormat) Match(m ocispec.Manifest) bool {
	if m.ArtifactType == ArtifactTypeAgoda || m.Config.MediaType == MediaTypeAgodaConfig {
		return true
	}
	for _, l := range m.Layers {
		switch l.MediaType {
		case MediaTypeAgodaDisk, MediaTypeAgodaAux, MediaTypeAgodaConfig:
			return true
		}
	}
	return false
}

type agodaConfig struct {
	MediaType         string  `json:"mediatype"`
	OS                string  `json:"os"`
	HardwareModelData *string `json:"hardwareModelData"`
	MachineIDData     *string `json:"machineIdData"`
}

// agodaLayer is a layer the unpacker uses; file is empty for the config.
type agodaLayer struct {
	file       string
	compressed bool
	size       int64 // decompressed size when compressed, else the blob size
	digest     digest.Digest
}

type agodaUnpacker struct {
	dir    string
	m      ocispec.Manifest
	layers map[int]agodaLayer
	t      *tracker
	b      *budget
	arch   string
	config []byte
}

func (AgodaFormat) NewUnpacker(ctx context.Context, m ocispec.Manifest, _ []byte, dir string, lim Limits) (Unpacker, error) {
	u := &agodaUnpacker{dir: dir, m: m, layers: map[int]agodaLayer{}, t: newTracker(len(m.Layers)), b: newBudget(dir, lim), arch: "arm64"}
	if p := m.Config.Platform; p != nil && p.Architecture != "" {
		u.arch = p.Architecture
	}
	if u.arch != "arm64" {
		return nil, notImplementedf("agoda image for architecture %q: macOS guests are arm64", u.arch)
	}
	count := map[string]int{}
	for i, l := range m.Layers {
		var file string
		switch l.MediaType {
		case MediaTypeAgodaDisk:
			file = DiskFile
		case MediaTypeAgodaAux:
			file = AuxFile
		case MediaTypeAgodaConfig:
		default:
			continue
		}
		count[l.MediaType]++
		al := agodaLayer{file: file, size: l.Size}
		size, hasSize, err := sizeAnnotation(i, l, AnnotationAgodaUncompressedSize)
		if err != nil {
			return nil, err
		}
		dg, hasDigest, err := digestAnnotation(i, l, AnnotationAgodaUncompressedDigest)
		if err != nil {
			return nil, err
		}
		if file != "" && hasSize && hasDigest {
			if _, err := newHash(i, l, dg); err != nil {
				return nil, err
			}
			al.compressed, al.size, al.digest = true, size, dg
		}
		u.layers[i] = al
	}
	for _, mt := range []string{MediaTypeAgodaDisk, MediaTypeAgodaAux, MediaTypeAgodaConfig} {
		if count[mt] != 1 {
			return nil, invalidf("agoda image has %d layers of media type %s, want 1", count[mt], mt)
		}
	}
	sizes := map[int]int64{}
	for i, l := range u.layers {
		if l.file != "" {
			sizes[i] = l.size
		}
	}
	if err := u.b.declared(m, sizes); err != nil {
		return nil, err
	}
	return u, nil
}

func (u *agodaUnpacker) Layer(i int) (io.WriteCloser, error) {
	if err := u.t.open(i); err != nil {
		return nil, err
	}
	l, ok := u.layers[i]
	if !ok {
		return u.t.discard(i), nil
	}
	desc := u.m.Layers[i]
	if l.file == "" {
		buf := &limitedBuffer{what: layerName(i, desc)}
		return &layerWriter{w: buf, i: i, t: u.t, finish: func() error {
			u.t.mu.Lock()
			u.config = buf.b
			u.t.mu.Unlock()
			return nil
		}}, nil
	}
	f, err := createSized(u.dir, l.file, l.size)
	if err != nil {
		u.t.closed(i, err)
		return nil, err
	}
	d := openDirect(f)
	u.t.onAbort(func() { closeFiles(f, d) })
	h, _ := newHash(i, desc, l.digest)
	sw := &sparseWriter{f: f, limit: l.size, h: h, b: u.b, what: layerName(i, desc), d: newDirectStage(f, d)}
	var w io.WriteCloser = nopCloser{sw}
	if l.compressed {
		w = gunzipTo(u.t, sw)
	}
	return &layerWriter{w: w, i: i, t: u.t, finish: func() error {
		err := w.Close()
		if err != nil {
			err = decodeErr(layerName(i, desc), err)
		} else {
			// An uncompressed layer's bytes are the blob, whose digest the
			// puller verified.
			err = sw.verify(layerName(i, desc), l.size, l.digest)
		}
		if err == nil {
			err = f.Sync()
		}
		if cerr := closeFiles(f, d); err == nil {
			err = cerr
		}
		return err
	}}, nil
}

type nopCloser struct{ io.Writer }

func (nopCloser) Close() error { return nil }

func (u *agodaUnpacker) Finish(ctx context.Context) error {
	var want []int
	for i := range u.layers {
		want = append(want, i)
	}
	if err := u.t.check(u.m, want); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	d, err := agodaDescriptor(u.config, u.arch)
	if err != nil {
		return err
	}
	return WriteDescriptor(u.dir, d)
}

// agodaDescriptor checks a macOS-vz-kubelet config and makes the
// descriptor of a base holding disk.img and aux.img.
func agodaDescriptor(config []byte, arch string) (*Descriptor, error) {
	bad := func(format string, args ...any) error {
		return invalidf("agoda config (layer %s): %s", MediaTypeAgodaConfig, fmt.Sprintf(format, args...))
	}
	var c agodaConfig
	if err := json.Unmarshal(config, &c); err != nil {
		return nil, bad("%v", err)
	}
	if c.OS != "" && c.OS != "darwin" {
		return nil, notImplementedf("agoda config (layer %s): os %q: only darwin guests are known", MediaTypeAgodaConfig, c.OS)
	}
	d := &Descriptor{Kind: KindAgoda, OS: "darwin", Arch: arch, Disk: DiskFile, NVRAM: AuxFile}
	var err error
	if d.HardwareModel, err = decodeBase64("hardwareModelData", c.HardwareModelData); err != nil {
		return nil, bad("%v", err)
	}
	if d.MachineID, err = decodeBase64("machineIdData", c.MachineIDData); err != nil {
		return nil, bad("%v", err)
	}
	return d, nil
}

func (u *agodaUnpacker) Abort() { u.t.abort() }

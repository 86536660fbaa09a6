package vmimage

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math"
	"os"
	"path/filepath"
	"strings"
	"sync"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/macvz/macvz/vmimage/applelz4"
)

// Tart images (github.com/cirruslabs/tart). Facts from Tart's sources,
// Sources/tart/OCI/Manifest.swift, OCI/Layerizer/DiskV2.swift,
// VMDirectory+OCI.swift, VMConfig.swift, Platform/*.swift and
// DiskImageFormat.swift:
//
//   - The manifest config is an ordinary OCI image config
//     (architecture, os, config.Labels); the VM's own config is a layer.
//   - Layers: one config layer (Tart's VMConfig JSON), the disk split
//     into disk.v2 layers, one nvram layer (stored as-is).
//   - Each disk.v2 layer is a chunk of the disk of at most 512 MiB,
//     compressed on its own with NSData.compressed(using: .lz4), Apple's
//     LZ4 framing (package applelz4). The layer's annotations give the
//     chunk's uncompressed size (decimal) and the digest of its
//     uncompressed bytes ("sha256:<hex>"). Chunks are laid end to end in
//     manifest order; Tart truncates the disk to the sum of the sizes and
//     writes each chunk at its offset, skipping zero runs.
//   - The manifest annotation uncompressed-disk-size is the total size.
//   - The OCI config's label org.cirruslabs.tart.disk.format is the disk
//     image format, "raw" or "asif" (Apple Sparse Image Format, macOS 26);
//     the VM config's diskFormat says the same (absent means raw).
//   - disk.v1 (one LZ4 stream cut into 500 MB layers) is Tart's legacy
//     format; Tart no longer pulls it ("no longer supported, please
//     re-push the image using a current Tart version"), nor does macvz.
const (
	MediaTypeTartConfig = "application/vnd.cirruslabs.tart.config.v1"
	MediaTypeTartDiskV1 = "application/vnd.cirruslabs.tart.disk.v1"
	MediaTypeTartDiskV2 = "application/vnd.cirruslabs.tart.disk.v2"
	MediaTypeTartNVRAM  = "application/vnd.cirruslabs.tart.nvram.v1"

	AnnotationTartUncompressedSize     = "org.cirruslabs.tart.uncompressed-size"
	AnnotationTartUncompressedDigest   = "org.cirruslabs.tart.uncompressed-content-digest"
	AnnotationTartUncompressedDiskSize = "org.cirruslabs.tart.uncompressed-disk-size"
	LabelTartDiskFormat                = "org.cirruslabs.tart.disk.format"

	tartMediaTypePrefix = "application/vnd.cirruslabs.tart."
)

// TartFormat is the Tart image format.
type TartFormat struct{}

func (TartFormat) Kind() Kind { return KindTart }

func (TartFormat) Match(m ocispec.Manifest) bool {
	for _, l := range m.Layers {
		if strings.HasPrefix(l.MediaType, tartMediaTypePrefix) {
			return true
		}
	}
	return false
}

// tartVMConfig is the part of Tart's VMConfig JSON macvz uses.
type tartVMConfig struct {
	Version       int     `json:"version"`
	OS            string  `json:"os"`
	Arch          string  `json:"arch"`
	CPUCount      int     `json:"cpuCount"`
	MemorySize    uint64  `json:"memorySize"`
	MACAddress    string  `json:"macAddress"`
	DiskFormat    string  `json:"diskFormat"`
	ECID          *string `json:"ecid"`
	HardwareModel *string `json:"hardwareModel"`
	Display       *struct {
		Width  int    `json:"width"`
		Height int    `json:"height"`
		Unit   string `json:"unit"`
	} `json:"display"`
}

// ociImageConfig is the part of the manifest's OCI config Tart fills in.
type ociImageConfig struct {
	Architecture string `json:"architecture"`
	OS           string `json:"os"`
	Config       struct {
		Labels map[string]string `json:"Labels"`
	} `json:"config"`
}

type tartRole uint8

const (
	tartIgnored tartRole = iota
	tartConfig
	tartChunk
	tartNVRAM
)

type tartLayer struct {
	role   tartRole
	offset int64
	size   int64
	digest digest.Digest
}

type tartUnpacker struct {
	dir    string
	m      ocispec.Manifest
	layers []tartLayer
	t      *tracker
	disk   *os.File
	direct *os.File // disk opened for direct writes (direct.go), or nil
	size   int64
	b      *budget

	config []byte // the VM config layer, once closed

	// chunks are the disk layers by content, the first opened of each.
	// A disk's free space is many identical chunks (one layer digest for
	// every all-zero chunk of a size): once one of them has decoded to
	// zeros and passed its checks, the others stop decoding and are left
	// as the holes they already are, instead of each being decoded and
	// hashed again (0.4 CPU-s per 512 MiB chunk).
	chunkMu sync.Mutex
	chunks  map[chunkKey]*firstChunk
}

// chunkKey is what makes two disk layers decode to the same bytes: the
// same blob, and the same size and digest announced for its plaintext.
type chunkKey struct {
	blob  digest.Digest
	size  int64
	plain digest.Digest
}

// firstChunk is the first opened disk layer of its content.
type firstChunk struct {
	done chan struct{} // closed when its writer closed
	// zero: it decoded to zeros only and passed its checks. The key's
	// uncompressed size and digest then say that any layer of the key
	// decodes to zeros, if it decodes at all (and its blob's digest,
	// checked by the content store, says it does).
	zero bool
}

func (TartFormat) NewUnpacker(ctx context.Context, m ocispec.Manifest, config []byte, dir string, lim Limits) (Unpacker, error) {
	return newTartUnpacker(m, config, dir, lim, false)
}

// ResumeUnpacker reuses the disk an interrupted unpack left in dir (its
// layers count as unpacked only once Resume has checked them) and drops
// the small files it may have left, which are written again.
func (TartFormat) ResumeUnpacker(ctx context.Context, m ocispec.Manifest, config []byte, dir string, lim Limits) (Unpacker, error) {
	return newTartUnpacker(m, config, dir, lim, true)
}

func newTartUnpacker(m ocispec.Manifest, config []byte, dir string, lim Limits, resume bool) (*tartUnpacker, error) {
	if len(config) > 0 {
		var oc ociImageConfig
		if err := json.Unmarshal(config, &oc); err != nil {
			return nil, invalidf("Tart image config (%s): %v", m.Config.MediaType, err)
		}
		if f := oc.Config.Labels[LabelTartDiskFormat]; f != "" && f != "raw" {
			return nil, notImplementedf("Tart disk format %q (label %s): only raw disks are supported", f, LabelTartDiskFormat)
		}
	}
	if f := m.Annotations[LabelTartDiskFormat]; f != "" && f != "raw" {
		return nil, notImplementedf("Tart disk format %q (annotation %s): only raw disks are supported", f, LabelTartDiskFormat)
	}
	u := &tartUnpacker{dir: dir, m: m, layers: make([]tartLayer, len(m.Layers)), t: newTracker(len(m.Layers)), b: newBudget(dir, lim),
		chunks: map[chunkKey]*firstChunk{}}
	sizes := map[int]int64{}
	var configs, nvrams, chunks int
	for i, l := range m.Layers {
		switch l.MediaType {
		case MediaTypeTartConfig:
			configs++
			u.layers[i].role = tartConfig
		case MediaTypeTartNVRAM:
			nvrams++
			u.layers[i].role = tartNVRAM
			sizes[i] = l.Size
		case MediaTypeTartDiskV1:
			return nil, notImplementedf("%s: Tart's legacy disk format %s, which Tart itself no longer pulls; re-push the image with a current Tart", layerName(i, l), MediaTypeTartDiskV1)
		case MediaTypeTartDiskV2:
			chunks++
			size, ok, err := sizeAnnotation(i, l, AnnotationTartUncompressedSize)
			if err != nil {
				return nil, err
			}
			if !ok {
				return nil, invalidf("%s: missing annotation %s", layerName(i, l), AnnotationTartUncompressedSize)
			}
			dg, ok, err := digestAnnotation(i, l, AnnotationTartUncompressedDigest)
			if err != nil {
				return nil, err
			}
			if !ok {
				return nil, invalidf("%s: missing annotation %s", layerName(i, l), AnnotationTartUncompressedDigest)
			}
			if _, err := newHash(i, l, dg); err != nil {
				return nil, err
			}
			u.layers[i] = tartLayer{role: tartChunk, offset: u.size, size: size, digest: dg}
			// Saturates: the cap refuses such a disk below.
			u.size += min(size, math.MaxInt64-u.size)
			sizes[i] = size
		}
	}
	if configs != 1 {
		return nil, invalidf("Tart image has %d layers of media type %s, want 1", configs, MediaTypeTartConfig)
	}
	if nvrams != 1 {
		return nil, invalidf("Tart image has %d layers of media type %s, want 1", nvrams, MediaTypeTartNVRAM)
	}
	if chunks == 0 {
		return nil, invalidf("Tart image has no disk layer (%s)", MediaTypeTartDiskV2)
	}
	if err := u.b.declared(m, sizes); err != nil {
		return nil, err
	}
	if v, ok := m.Annotations[AnnotationTartUncompressedDiskSize]; ok && v != fmt.Sprint(u.size) {
		return nil, invalidf("Tart manifest annotation %s=%q disagrees with its disk layers, whose %s add up to %d", AnnotationTartUncompressedDiskSize, v, AnnotationTartUncompressedSize, u.size)
	}
	var disk *os.File
	var err error
	if resume {
		for _, name := range []string{NVRAMFile, DescriptorFile} {
			if err := os.Remove(filepath.Join(dir, name)); err != nil && !errors.Is(err, fs.ErrNotExist) {
				return nil, err
			}
		}
		disk, err = openSized(dir, DiskFile, u.size)
	} else {
		disk, err = createSized(dir, DiskFile, u.size)
	}
	if err != nil {
		return nil, err
	}
	u.disk = disk
	u.direct = openDirect(disk)
	return u, nil
}

// Resumable: the disk's chunks can be checked in place; the config and
// NVRAM layers are small and written again.
func (u *tartUnpacker) Resumable(i int) bool {
	return i >= 0 && i < len(u.layers) && u.layers[i].role == tartChunk
}

func (u *tartUnpacker) Resume(ctx context.Context, i int) (bool, error) {
	if !u.Resumable(i) {
		return false, invalidf("layer %d is not a disk chunk: it cannot be resumed", i)
	}
	if err := u.t.open(i); err != nil {
		return false, err
	}
	l, desc := u.layers[i], u.m.Layers[i]
	var src io.Reader = io.NewSectionReader(u.disk, l.offset, l.size)
	if isHole(u.disk, l.offset, l.size) {
		// A disk's free space: every such chunk reads as the same zeros,
		// whose digest the store knows once per size (zeroChunk).
		src = nil
	}
	got, err := plainDigest(ctx, l.digest.Algorithm(), src, l.size)
	if err != nil {
		u.t.reset(i)
		return false, err
	}
	if got != l.digest {
		u.t.reset(i)
		return false, u.Clear(i)
	}
	// Counted as the layer's writes would have counted it (holes
	// included), so the cap covers the disk whichever way it arrived.
	if u.b.written.Add(l.size) > u.b.max {
		u.t.reset(i)
		return false, u.b.tooLarge(layerName(i, desc))
	}
	u.t.closed(i, nil)
	return true, nil
}

func (u *tartUnpacker) Clear(i int) error {
	if !u.Resumable(i) {
		return invalidf("layer %d is not a disk chunk", i)
	}
	l := u.layers[i]
	return punchHole(u.disk, l.offset, l.size)
}

// plainDigest is the digest of the n bytes src gives; a nil src is n
// zeros, whose sha256 digest zeroChunk already knows (cached per size).
func plainDigest(ctx context.Context, alg digest.Algorithm, src io.Reader, n int64) (digest.Digest, error) {
	if src == nil {
		if alg == digest.Canonical {
			d, err := zeroChunk(n)
			return digest.Digest(d.Annotations[AnnotationTartUncompressedDigest]), err
		}
		src = io.NewSectionReader(zeroReader{}, 0, n)
	}
	h := alg.Hash()
	if _, err := copyCtx(ctx, h, src, nil); err != nil {
		return "", err
	}
	return digest.NewDigest(alg, h), nil
}

func (u *tartUnpacker) Layer(i int) (io.WriteCloser, error) {
	if err := u.t.open(i); err != nil {
		return nil, err
	}
	l, desc := u.layers[i], u.m.Layers[i]
	switch l.role {
	case tartConfig:
		buf := &limitedBuffer{what: layerName(i, desc)}
		return &layerWriter{w: buf, i: i, t: u.t, finish: func() error {
			u.t.mu.Lock()
			u.config = buf.b
			u.t.mu.Unlock()
			return nil
		}}, nil
	case tartNVRAM:
		return fileWriter(u.t, u.b, i, desc, u.dir, NVRAMFile)
	case tartChunk:
		key := chunkKey{blob: desc.Digest, size: l.size, plain: l.digest}
		u.chunkMu.Lock()
		first := u.chunks[key]
		var mine *firstChunk
		if first == nil {
			mine = &firstChunk{done: make(chan struct{})}
			u.chunks[key] = mine
		}
		u.chunkMu.Unlock()
		h, _ := newHash(i, desc, l.digest)
		sw := &sparseWriter{f: u.disk, base: l.offset, limit: l.size, h: h, b: u.b, what: layerName(i, desc), d: newDirectStage(u.disk, u.direct)}
		dec := applelz4.NewDecoder(sw)
		dec.SetLimit(l.size)
		cw := &chunkWriter{dec: dec, first: first}
		return &layerWriter{w: cw, i: i, t: u.t, finish: func() error {
			if cw.skipped {
				return nil
			}
			err := dec.Close()
			if err != nil {
				err = decodeErr(layerName(i, desc), err)
			} else {
				err = sw.verify(layerName(i, desc), l.size, l.digest)
			}
			if mine != nil {
				mine.zero = err == nil && !sw.wrote
				close(mine.done)
			}
			return err
		}}, nil
	}
	return u.t.discard(i), nil
}

func (u *tartUnpacker) Finish(ctx context.Context) error {
	var want []int
	for i, l := range u.layers {
		if l.role != tartIgnored {
			want = append(want, i)
		}
	}
	if err := u.t.check(u.m, want); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	d, err := tartDescriptor(u.config)
	if err != nil {
		return err
	}
	if err := u.disk.Sync(); err != nil {
		return err
	}
	if err := closeFiles(u.disk, u.direct); err != nil {
		return err
	}
	return WriteDescriptor(u.dir, d)
}

func (u *tartUnpacker) Abort() {
	u.t.abort()
	closeFiles(u.disk, u.direct)
}

// chunkWriter decodes a disk layer, unless an earlier-opened layer of the
// same content (first) has decoded to zeros and passed its checks: from
// then on it takes the rest of its bytes without decoding them, its
// range of the disk being holes, which read as zeros. It never waits for
// first: a layer may be the one whose download the first's waits for
// (the content store lets one ingest of a blob run at a time).
type chunkWriter struct {
	dec     *applelz4.Decoder
	first   *firstChunk // nil for the first of its content
	skipped bool
}

func (c *chunkWriter) Write(p []byte) (int, error) {
	if !c.skipped && c.first != nil {
		select {
		case <-c.first.done:
			c.skipped = c.first.zero
		default:
		}
	}
	if c.skipped {
		return len(p), nil
	}
	return c.dec.Write(p)
}

// tartDescriptor checks a Tart VM config and makes the descriptor.
func tartDescriptor(b []byte) (*Descriptor, error) {
	bad := func(format string, args ...any) error {
		return invalidf("Tart VM config (layer %s): %s", MediaTypeTartConfig, fmt.Sprintf(format, args...))
	}
	var c tartVMConfig
	if err := json.Unmarshal(b, &c); err != nil {
		return nil, bad("%v", err)
	}
	if c.Version != 1 {
		if c.Version == 0 {
			return nil, bad("no version")
		}
		return nil, notImplementedf("Tart VM config (layer %s) version %d: only version 1 is known", MediaTypeTartConfig, c.Version)
	}
	if c.DiskFormat != "" && c.DiskFormat != "raw" {
		return nil, notImplementedf("Tart disk format %q (VM config diskFormat): only raw disks are supported", c.DiskFormat)
	}
	d := &Descriptor{
		Kind:       KindTart,
		OS:         c.OS,
		Arch:       c.Arch,
		Disk:       DiskFile,
		NVRAM:      NVRAMFile,
		MACAddress: c.MACAddress,
	}
	// Tart's defaults for absent keys (VMConfig.init(from:)).
	if d.OS == "" {
		d.OS = "darwin"
	}
	if d.Arch == "" {
		d.Arch = "arm64"
	}
	if d.OS != "darwin" && d.OS != "linux" {
		return nil, bad("os %q is neither darwin nor linux", d.OS)
	}
	if d.Arch != "arm64" && d.Arch != "amd64" {
		return nil, bad("arch %q is neither arm64 nor amd64", d.Arch)
	}
	if c.CPUCount < 1 {
		return nil, bad("cpuCount %d", c.CPUCount)
	}
	if c.MemorySize == 0 || c.MemorySize > math.MaxInt64 {
		return nil, bad("memorySize %d", c.MemorySize)
	}
	// Tart runs the VM with cpuCount and memorySize (the *Min values only
	// bound what a user may set), so the image's VM gets at least those.
	d.MinCPUs, d.MinMemoryBytes = c.CPUCount, int64(c.MemorySize)
	if c.Display != nil && c.Display.Width > 0 && c.Display.Height > 0 {
		d.Display = fmt.Sprintf("%dx%d%s", c.Display.Width, c.Display.Height, c.Display.Unit)
	}
	if d.OS == "darwin" {
		// Platform/Darwin.swift: both are base64 of the Virtualization
		// framework's dataRepresentation, and both are required.
		var err error
		if d.HardwareModel, err = decodeBase64("hardwareModel", c.HardwareModel); err != nil {
			return nil, bad("%v", err)
		}
		if d.MachineID, err = decodeBase64("ecid", c.ECID); err != nil {
			return nil, bad("%v", err)
		}
	}
	return d, nil
}

func decodeBase64(key string, v *string) ([]byte, error) {
	if v == nil || *v == "" {
		return nil, fmt.Errorf("no %s", key)
	}
	b, err := base64.StdEncoding.DecodeString(*v)
	if err != nil {
		return nil, fmt.Errorf("%s is not base64: %v", key, err)
	}
	return b, nil
}

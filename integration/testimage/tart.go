package testimage

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"slices"
	"strconv"
	"sync"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/macvz/macvz/vmimage"
	"github.com/macvz/macvz/vmimage/applelz4"
)

// TartOptions describe a Tart image. The zero value is a small darwin
// image.
type TartOptions struct {
	Seed uint64
	// Disk is the disk's content; when nil, DiskPattern(Seed, DiskSize).
	Disk     []byte
	DiskSize int64 // default 8 MiB
	// ChunkSize is the uncompressed size of each disk layer; Tart uses
	// 512 MiB, the default.
	ChunkSize int64
	// BlockSize is the plaintext size of the LZ4 blocks in each chunk.
	BlockSize int

	OS, Arch   string // default darwin, arm64
	CPUCount   int    // default 4
	MemorySize uint64 // default 8 GiB
	// DiskFormat is the org.cirruslabs.tart.disk.format label and the VM
	// config's diskFormat; default raw.
	DiskFormat string
	// HardwareModel and MachineID (darwin only) default to bytes derived
	// from Seed.
	HardwareModel, MachineID []byte
	NVRAM                    []byte // default 256 KiB derived from Seed

	// TruncateChunks lists disk layers whose blob is cut in half (the
	// descriptor matches the cut blob; the annotations keep the real
	// uncompressed size and digest).
	TruncateChunks []int
	// BadDigestChunks lists disk layers whose uncompressed-content-digest
	// annotation is wrong.
	BadDigestChunks []int
}

// Tart builds an image the way Tart pushes one (Sources/tart/
// VMDirectory+OCI.swift, OCI/Layerizer/DiskV2.swift): a stub OCI config
// with the disk format label, a config layer holding Tart's VMConfig
// JSON, the disk cut into chunks each compressed on its own with Apple's
// LZ4 framing, and the NVRAM as-is.
func Tart(o TartOptions) (Image, error) {
	if o.DiskSize == 0 {
		o.DiskSize = 8 << 20
	}
	if o.Disk == nil {
		o.Disk = DiskPattern(o.Seed, o.DiskSize)
	}
	if o.ChunkSize <= 0 {
		o.ChunkSize = 512 << 20
	}
	if o.OS == "" {
		o.OS = "darwin"
	}
	if o.Arch == "" {
		o.Arch = "arm64"
	}
	if o.CPUCount == 0 {
		o.CPUCount = 4
	}
	if o.MemorySize == 0 {
		o.MemorySize = 8 << 30
	}
	if o.DiskFormat == "" {
		o.DiskFormat = "raw"
	}
	if o.NVRAM == nil {
		o.NVRAM = randomBytes(o.Seed, 1, 256<<10)
	}

	// VMConfig.encode(to:) and Darwin.encode(to:) keys.
	vmConfig := map[string]any{
		"version":       1,
		"os":            o.OS,
		"arch":          o.Arch,
		"cpuCountMin":   o.CPUCount,
		"cpuCount":      o.CPUCount,
		"memorySizeMin": o.MemorySize,
		"memorySize":    o.MemorySize,
		"macAddress":    macAddress(o.Seed),
		"display":       map[string]any{"width": 1024, "height": 768},
		"diskFormat":    o.DiskFormat,
	}
	if o.OS == "darwin" {
		hw, id := o.HardwareModel, o.MachineID
		if hw == nil {
			hw = append([]byte("bplist00"), randomBytes(o.Seed, 2, 100)...)
		}
		if id == nil {
			id = append([]byte("bplist00"), randomBytes(o.Seed, 3, 40)...)
		}
		vmConfig["hardwareModel"] = base64.StdEncoding.EncodeToString(hw)
		vmConfig["ecid"] = base64.StdEncoding.EncodeToString(id)
	}
	vmConfigJSON, err := json.Marshal(vmConfig)
	if err != nil {
		return Image{}, err
	}

	chunks, err := tartChunks(o)
	if err != nil {
		return Image{}, err
	}
	layers := []Blob{NewBlob(vmimage.MediaTypeTartConfig, vmConfigJSON, nil)}
	layers = append(layers, chunks...)
	layers = append(layers, NewBlob(vmimage.MediaTypeTartNVRAM, o.NVRAM, nil))

	ociConfig, err := json.Marshal(map[string]any{
		"architecture": o.Arch,
		"os":           o.OS,
		"config":       map[string]any{"Labels": map[string]string{vmimage.LabelTartDiskFormat: o.DiskFormat}},
	})
	if err != nil {
		return Image{}, err
	}
	config := NewBlob(ocispec.MediaTypeImageConfig, ociConfig, nil)
	m := ocispec.Manifest{
		Config: config.Desc,
		Layers: descs(layers),
		Annotations: map[string]string{
			vmimage.AnnotationTartUncompressedDiskSize: strconv.Itoa(len(o.Disk)),
			"org.cirruslabs.tart.upload-time":          "2025-01-01T00:00:00Z",
		},
	}
	return FromManifest(m, uniqueBlobs(append([]Blob{config}, layers...))...)
}

// tartSegment is how much of a chunk one core compresses at a time. The
// encoder's blocks are independent, so segments encoded apart and then
// concatenated form one valid stream.
const tartSegment = 8 << 20

func tartChunks(o TartOptions) ([]Blob, error) {
	n := int((int64(len(o.Disk)) + o.ChunkSize - 1) / o.ChunkSize)
	chunk := func(i int) []byte {
		lo := int64(i) * o.ChunkSize
		return o.Disk[lo:min(lo+o.ChunkSize, int64(len(o.Disk)))]
	}
	bs := o.BlockSize
	if bs <= 0 {
		bs = applelz4.DefaultBlockSize
	}
	seg := max(tartSegment/bs, 1) * bs
	type job struct{ chunk, seg int }
	var jobs []job
	encoded := make([][][]byte, n)
	digests := make([]digest.Digest, n)
	for i := range n {
		segs := (len(chunk(i)) + seg - 1) / seg
		encoded[i] = make([][]byte, segs)
		jobs = append(jobs, job{i, -1}) // the chunk's uncompressed digest
		for s := range segs {
			jobs = append(jobs, job{i, s})
		}
	}
	parallel(len(jobs), func(k int) {
		j := jobs[k]
		c := chunk(j.chunk)
		if j.seg < 0 {
			digests[j.chunk] = digest.FromBytes(c)
			return
		}
		// Encode into a reused worst-case buffer and keep an exact copy:
		// growing the output by appending costs more than compressing.
		sc := scratch.Get().(*encodeScratch)
		defer scratch.Put(sc)
		sc.e.BlockSize = bs
		lo := j.seg * seg
		sc.buf = sc.e.AppendBlocks(sc.buf[:0], c[lo:min(lo+seg, len(c))])
		encoded[j.chunk][j.seg] = slices.Clone(sc.buf)
	})
	blobs := make([]Blob, n)
	parallel(n, func(i int) {
		size := len(applelz4.MagicEnd)
		for _, e := range encoded[i] {
			size += len(e)
		}
		data := make([]byte, 0, size)
		for _, e := range encoded[i] {
			data = append(data, e...)
		}
		data = applelz4.AppendEnd(data)
		if slices.Contains(o.TruncateChunks, i) {
			data = data[:len(data)/2]
		}
		d := digests[i]
		if slices.Contains(o.BadDigestChunks, i) {
			d = digest.FromString(fmt.Sprintf("not chunk %d", i))
		}
		blobs[i] = NewBlob(vmimage.MediaTypeTartDiskV2, data, map[string]string{
			vmimage.AnnotationTartUncompressedSize:   strconv.Itoa(len(chunk(i))),
			vmimage.AnnotationTartUncompressedDigest: d.String(),
		})
	})
	return blobs, nil
}

type encodeScratch struct {
	e   applelz4.Encoder
	buf []byte
}

var scratch = sync.Pool{New: func() any { return &encodeScratch{buf: make([]byte, 0, tartSegment+tartSegment/8)} }}

// macAddress is a locally administered unicast address derived from seed.
func macAddress(seed uint64) string {
	b := randomBytes(seed, 4, 6)
	b[0] = b[0]&^1 | 2
	return fmt.Sprintf("%02x:%02x:%02x:%02x:%02x:%02x", b[0], b[1], b[2], b[3], b[4], b[5])
}

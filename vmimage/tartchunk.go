package vmimage

import (
	"context"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"sync"

	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"golang.org/x/sync/errgroup"

	"github.com/macvz/macvz/snapshotter"
	"github.com/macvz/macvz/vmimage/applelz4"
)

// TartChunkSize is the uncompressed size of each of Tart's disk layers
// but the last (DiskV2.swift: 512 MiB).
const TartChunkSize = 512 << 20

// tartChunkSize is TartChunkSize but in tests.
var tartChunkSize int64 = TartChunkSize

// chunkSegment is how much of a chunk is read and compressed at a time.
const chunkSegment = 8 << 20

// TartChunks describes disk as Tart's disk.v2 layers: for each 512 MiB
// chunk, its size and digest compressed with Apple's LZ4 framing and
// the uncompressed-size and content-digest annotations. The compressed
// bytes are counted and hashed, not kept: WriteTartChunk makes them
// again, byte for byte, when a push needs them. Chunks are compressed
// by workers goroutines at once; a chunk that is all holes is never
// read (every such chunk of one size is the same layer).
func TartChunks(ctx context.Context, disk *os.File, workers int, progress PackProgress) ([]ocispec.Descriptor, error) {
	fi, err := disk.Stat()
	if err != nil {
		return nil, err
	}
	size := fi.Size()
	if size == 0 {
		return nil, invalidf("%s is empty", disk.Name())
	}
	var data [][2]int64
	if err := snapshotter.DataRanges(disk, size, func(start, end int64) error {
		data = append(data, [2]int64{start, end})
		return nil
	}); err != nil {
		return nil, err
	}
	holes := func(off, n int64) bool {
		for _, r := range data {
			if r[0] < off+n && r[1] > off {
				return false
			}
		}
		return true
	}
	n := int((size + tartChunkSize - 1) / tartChunkSize)
	out := make([]ocispec.Descriptor, n)
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(max(workers, 1))
	for i := range n {
		off := int64(i) * tartChunkSize
		length := min(tartChunkSize, size-off)
		g.Go(func() error {
			var d ocispec.Descriptor
			var err error
			if holes(off, length) {
				d, err = zeroChunk(length)
				if err == nil && progress != nil {
					progress(length)
				}
			} else {
				d, err = describeChunk(gctx, disk, off, length, progress)
			}
			out[i] = d
			return err
		})
	}
	if err := g.Wait(); err != nil {
		return nil, err
	}
	return out, nil
}

// AnnotationPacker, on a manifest, says its Tart chunks were made by
// macvz's encoder (PackerTartLZ4): WriteTartChunk makes them again byte
// for byte. Chunks Tart made (Apple's encoder) decode to the same disk
// but are other bytes.
const (
	AnnotationPacker = "io.macvz.image.packer"
	PackerTartLZ4    = "macvz-applelz4-64k/1"
)

// DescribeTartChunk is the disk.v2 layer WriteTartChunk makes of bytes
// [off, off+length) of disk.
func DescribeTartChunk(ctx context.Context, disk io.ReaderAt, off, length int64) (ocispec.Descriptor, error) {
	return describeChunk(ctx, disk, off, length, nil)
}

// describeChunk compresses one chunk into a counter and returns its
// layer descriptor.
func describeChunk(ctx context.Context, disk io.ReaderAt, off, length int64, progress PackProgress) (ocispec.Descriptor, error) {
	cw := &hashCounter{d: digest.Canonical.Digester()}
	raw, err := WriteTartChunk(ctx, disk, off, length, cw, progress)
	if err != nil {
		return ocispec.Descriptor{}, err
	}
	return chunkDescriptor(cw, length, raw), nil
}

func chunkDescriptor(cw *hashCounter, length int64, raw digest.Digest) ocispec.Descriptor {
	return ocispec.Descriptor{
		MediaType: MediaTypeTartDiskV2,
		Digest:    cw.d.Digest(),
		Size:      cw.n,
		Annotations: map[string]string{
			AnnotationTartUncompressedSize:   strconv.FormatInt(length, 10),
			AnnotationTartUncompressedDigest: raw.String(),
		},
	}
}

type hashCounter struct {
	d digest.Digester
	n int64
}

func (h *hashCounter) Write(p []byte) (int, error) {
	h.n += int64(len(p))
	return h.d.Hash().Write(p)
}

// zeroChunks caches the layer of an all-zero chunk by its length.
var zeroChunks sync.Map

func zeroChunk(length int64) (ocispec.Descriptor, error) {
	if d, ok := zeroChunks.Load(length); ok {
		return d.(ocispec.Descriptor), nil
	}
	cw := &hashCounter{d: digest.Canonical.Digester()}
	raw, err := writeChunk(context.Background(), zeroReader{}, length, cw, nil)
	if err != nil {
		return ocispec.Descriptor{}, err
	}
	d := chunkDescriptor(cw, length, raw)
	zeroChunks.Store(length, d)
	return d, nil
}

type zeroReader struct{}

func (zeroReader) ReadAt(p []byte, _ int64) (int, error) {
	clear(p)
	return len(p), nil
}

// WriteTartChunk writes bytes [off, off+length) of disk to w as one Tart
// disk.v2 layer and returns the digest of the bytes it read. The output
// depends on those bytes alone, so the same chunk always makes the same
// layer.
func WriteTartChunk(ctx context.Context, disk io.ReaderAt, off, length int64, w io.Writer, progress PackProgress) (digest.Digest, error) {
	return writeChunk(ctx, io.NewSectionReader(disk, off, length), length, w, progress)
}

func writeChunk(ctx context.Context, r io.ReaderAt, length int64, w io.Writer, progress PackProgress) (digest.Digest, error) {
	raw := digest.Canonical.Digester()
	seg := make([]byte, chunkSegment)
	out := make([]byte, 0, chunkSegment+chunkSegment/8)
	var e applelz4.Encoder
	for pos := int64(0); pos < length; {
		if err := ctx.Err(); err != nil {
			return "", err
		}
		b := seg[:min(int64(len(seg)), length-pos)]
		if n, err := r.ReadAt(b, pos); n != len(b) {
			if err == nil || err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			return "", fmt.Errorf("reading the disk at %d: %w", pos, err)
		}
		raw.Hash().Write(b)
		out = e.AppendBlocks(out[:0], b)
		if _, err := w.Write(out); err != nil {
			return "", err
		}
		pos += int64(len(b))
		if progress != nil {
			progress(int64(len(b)))
		}
	}
	if _, err := w.Write(applelz4.AppendEnd(nil)); err != nil {
		return "", err
	}
	return raw.Digest(), nil
}

// CanRemake says whether layer i of a VM image's manifest can be made
// again from its unpacked base (RemakeLayer), so that the store need not
// keep its blob.
func CanRemake(m ocispec.Manifest, i int) bool {
	l := m.Layers[i]
	switch l.MediaType {
	case MediaTypeTartDiskV2:
		return true
	case MediaTypeAgodaDisk:
		_, compressed := l.Annotations[AnnotationAgodaUncompressedDigest]
		return !compressed
	case MediaTypeLinuxDisk:
		return true
	}
	return false
}

// RemakeLayer writes layer i of manifest m again from base, the image's
// unpacked base directory: what a push sends of a disk layer whose blob
// the store released (image.keep_disk_chunks = false). What it writes
// is checked by the caller against the layer's digest; a Tart chunk is
// also checked against its content digest here, so a base that changed
// is said to have changed (DataLoss). A layer that cannot be made again
// (gzip-compressed: another gzip makes other bytes) is
// FailedPrecondition.
func RemakeLayer(ctx context.Context, m ocispec.Manifest, i int, base string, w io.Writer) error {
	if i < 0 || i >= len(m.Layers) {
		return invalidf("layer %d: the manifest has %d layers", i, len(m.Layers))
	}
	l := m.Layers[i]
	if !CanRemake(m, i) {
		return fmt.Errorf("%s was released after unpacking (image.keep_disk_chunks = false) and cannot be made again from the disk, since its compression is not reproducible; pull the image again with keep_disk_chunks = true to push it: %w", layerName(i, l), errdefs.ErrFailedPrecondition)
	}
	disk, err := os.Open(filepath.Join(base, DiskFile))
	if err != nil {
		return err
	}
	defer disk.Close()
	if l.MediaType != MediaTypeTartDiskV2 {
		// The layer is the disk as-is: exactly l.Size bytes of it.
		if fi, err := disk.Stat(); err != nil {
			return err
		} else if fi.Size() != l.Size {
			return corruptf("%s: the unpacked disk is %d bytes, the layer %d: the base changed", layerName(i, l), fi.Size(), l.Size)
		}
		_, err := copyCtx(ctx, w, io.NewSectionReader(disk, 0, l.Size), nil)
		return err
	}
	off, size, err := TartChunkRange(m, i)
	if err != nil {
		return err
	}
	want, _, err := digestAnnotation(i, l, AnnotationTartUncompressedDigest)
	if err != nil {
		return err
	}
	got, err := WriteTartChunk(ctx, disk, off, size, w, nil)
	if err != nil {
		return err
	}
	if want != "" && got != want {
		return corruptf("%s: the unpacked disk's bytes %d..%d have digest %s, the image says %s: the base changed", layerName(i, l), off, off+size, got, want)
	}
	return nil
}

// TartChunkRange is where disk.v2 layer i of a Tart manifest lies in the
// disk: after every chunk before it, its uncompressed size long.
func TartChunkRange(m ocispec.Manifest, i int) (off, size int64, err error) {
	for j := range i {
		if m.Layers[j].MediaType == MediaTypeTartDiskV2 {
			n, _, err := sizeAnnotation(j, m.Layers[j], AnnotationTartUncompressedSize)
			if err != nil {
				return 0, 0, err
			}
			if n > math.MaxInt64-off {
				return 0, 0, invalidf("%s: the disk chunks' sizes add up past %d bytes", layerName(j, m.Layers[j]), int64(math.MaxInt64))
			}
			off += n
		}
	}
	size, ok, err := sizeAnnotation(i, m.Layers[i], AnnotationTartUncompressedSize)
	if err != nil {
		return 0, 0, err
	}
	if !ok {
		return 0, 0, invalidf("%s: no %s", layerName(i, m.Layers[i]), AnnotationTartUncompressedSize)
	}
	if size > math.MaxInt64-off {
		return 0, 0, invalidf("%s: the disk chunks' sizes add up past %d bytes", layerName(i, m.Layers[i]), int64(math.MaxInt64))
	}
	return off, size, nil
}

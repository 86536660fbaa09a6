// Package vmimage knows the VM image formats macvz can boot (Tart, agoda
// macosvz, and macvz's own Linux-guest format), how to recognise them in an
// OCI manifest, and how to unpack their layers into a directory that the
// snapshotter commits as a VM base.
package vmimage

import (
	"context"
	"io"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// Kind names a VM image format. The zero Kind is an ordinary OCI/Docker
// image, which macvz stores but cannot boot.
type Kind string

const (
	KindNone  Kind = ""
	KindTart  Kind = "tart"
	KindAgoda Kind = "agoda"
	KindLinux Kind = "linux"
)

// Format is one VM image format.
// IsDiskLayer says whether a layer media type is (a chunk of) a VM
// disk: Tart's disk chunks, the agoda disk, a macvz Linux VM's disk.
// Once a VM image's base is unpacked nothing reads them again (an
// image volume of a Linux VM image reads its initramfs, not its disk),
// so the store can release them (image.keep_disk_chunks).
func IsDiskLayer(mediaType string) bool {
	switch mediaType {
	case MediaTypeTartDiskV1, MediaTypeTartDiskV2, MediaTypeAgodaDisk, MediaTypeLinuxDisk, MediaTypeLinuxDiskGzip:
		return true
	}
	return false
}

type Format interface {
	Kind() Kind
	// Match reports whether a manifest is of this format. It looks only at
	// media types and artifact types, never at blob contents.
	Match(m ocispec.Manifest) bool
	// NewUnpacker validates the manifest and its config blob and returns
	// an Unpacker that writes the VM's files into dir (an empty directory
	// that becomes the committed base). Validation failures (unsupported
	// disk format, missing layer, bad config) are errdefs.ErrNotImplemented
	// or errdefs.ErrInvalidArgument wrapped with a message naming the
	// media type or annotation at fault. An image whose layers announce
	// more output than lim allows, or more than the free space of dir's
	// file system, is refused here, before anything is downloaded
	// (errdefs.ErrInvalidArgument, errdefs.ErrResourceExhausted); the
	// layer writers enforce lim on what is actually written.
	NewUnpacker(ctx context.Context, m ocispec.Manifest, config []byte, dir string, lim Limits) (Unpacker, error)
}

// Unpacker receives the stored (compressed) bytes of each layer and writes
// their decoded contents into the base directory.
type Unpacker interface {
	// Layer returns a writer for manifest layer i. The caller writes the
	// layer's blob bytes, in order, exactly once, and then calls Close,
	// which reports decoding and verification errors (uncompressed size
	// and digest where the format records them). Writers for different
	// layers may be used concurrently from different goroutines. A layer
	// that carries nothing to unpack returns an io.Discard-like writer.
	Layer(i int) (io.WriteCloser, error)
	// Finish runs after every layer writer closed without error. It writes
	// Descriptor (vm.json) into dir.
	Finish(ctx context.Context) error
	// Abort releases resources after a failure; dir is removed by the caller.
	Abort()
}

// ResumableFormat is implemented by formats whose disk arrives in many
// independently verified layers (Tart's chunks): an unpack interrupted by
// the network can go on from the layers it finished instead of starting
// over, as Tart's own pull does.
type ResumableFormat interface {
	Format
	// ResumeUnpacker is NewUnpacker for a dir that an interrupted unpack of
	// the same manifest left behind (or an empty one): the files it
	// created are reused, not created afresh. Nothing in it counts as
	// unpacked until Resume says so.
	ResumeUnpacker(ctx context.Context, m ocispec.Manifest, config []byte, dir string, lim Limits) (Unpacker, error)
}

// Resumer is the Unpacker of a ResumableFormat.
type Resumer interface {
	Unpacker
	// Resume takes layer i as unpacked if what an earlier unpack wrote
	// for it still matches the manifest (its uncompressed size and
	// digest, read back from dir: a crash may have lost pages the
	// earlier unpack wrote). When it does not, the layer's output is
	// cleared and ok is false: the layer must be written again.
	Resume(ctx context.Context, i int) (ok bool, err error)
	// Clear discards whatever an earlier unpack may have written for
	// layer i, so that the layer can be written again from its start.
	Clear(i int) error
	// Resumable reports whether layer i is one that Resume can check;
	// the others (small layers kept in the content store) are written
	// again on every resume.
	Resumable(i int) bool
}

// Formats lists every VM format macvz understands, in match order.
var Formats []Format

// Detect returns the format of a manifest, or nil for an ordinary image.
func Detect(m ocispec.Manifest) Format {
	for _, f := range Formats {
		if f.Match(m) {
			return f
		}
	}
	return nil
}

// ProcessFormat is implemented by formats whose config names a default
// process (macvz's Linux-guest format).
type ProcessFormat interface {
	Process(config []byte) (*Process, error)
}

// DefaultProcess returns the default process a VM image's config names,
// or nil when its format has none.
func DefaultProcess(kind Kind, config []byte) (*Process, error) {
	for _, f := range Formats {
		if f.Kind() != kind {
			continue
		}
		if pf, ok := f.(ProcessFormat); ok {
			return pf.Process(config)
		}
	}
	return nil, nil
}

package vmimage

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"strings"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// macvz's own format for Linux guests that boot directly from a kernel
// (see README.md in this directory for the full description).
//
// The manifest is an OCI image manifest whose config has media type
// MediaTypeLinuxConfig (its artifactType, when set, is the same string).
// The config is LinuxConfig as JSON. Layers, in any order:
//
//	MediaTypeLinuxKernel    exactly one: an uncompressed kernel the
//	                        hypervisor loads directly (ELF vmlinux for
//	                        QEMU's PVH boot on x86_64, an arm64 Image for
//	                        Virtualization.framework)
//	MediaTypeLinuxInitrd    at most one: the initramfs, as-is
//	MediaTypeLinuxDisk      at most one disk layer: a raw disk image,
//	MediaTypeLinuxDiskGzip  or the same compressed with gzip; the optional
//	                        annotations AnnotationLinuxUncompressedSize and
//	                        AnnotationLinuxUncompressedDigest describe the
//	                        decompressed disk and are verified
//
// Any other layer media type is refused.
const (
	MediaTypeLinuxConfig   = "application/vnd.macvz.vm.config.v1+json"
	MediaTypeLinuxKernel   = "application/vnd.macvz.vm.kernel.v1"
	MediaTypeLinuxInitrd   = "application/vnd.macvz.vm.initrd.v1"
	MediaTypeLinuxDisk     = "application/vnd.macvz.vm.disk.v1"
	MediaTypeLinuxDiskGzip = "application/vnd.macvz.vm.disk.v1+gzip"

	AnnotationLinuxUncompressedSize   = "io.macvz.vm.uncompressed-size"
	AnnotationLinuxUncompressedDigest = "io.macvz.vm.uncompressed-digest"

	linuxMediaTypePrefix = "application/vnd.macvz.vm."
)

// LinuxConfig is the config blob of macvz's Linux-guest format.
type LinuxConfig struct {
	OS             string `json:"os"`   // "linux"
	Arch           string `json:"arch"` // "amd64" or "arm64"
	MinCPUs        int    `json:"minCpus,omitempty"`
	MinMemoryBytes int64  `json:"minMemoryBytes,omitempty"`
	// KernelCmdline is appended to the command line the runtime needs.
	KernelCmdline string   `json:"kernelCmdline,omitempty"`
	Process       *Process `json:"process,omitempty"`
}

// LinuxFormat is macvz's Linux-guest format.
type LinuxFormat struct{}

func (LinuxFormat) Kind() Kind { return KindLinux }

func (LinuxFormat) Match(m ocispec.Manifest) bool {
	if m.ArtifactType == MediaTypeLinuxConfig || m.Config.MediaType == MediaTypeLinuxConfig {
		return true
	}
	for _, l := range m.Layers {
		if strings.HasPrefix(l.MediaType, linuxMediaTypePrefix) {
			return true
		}
	}
	return false
}

// ParseLinuxConfig decodes and checks a LinuxConfig blob.
func ParseLinuxConfig(b []byte) (*LinuxConfig, error) {
	bad := func(format string, args ...any) error {
		return invalidf("macvz Linux VM config (%s): %s", MediaTypeLinuxConfig, fmt.Sprintf(format, args...))
	}
	var c LinuxConfig
	if err := json.Unmarshal(b, &c); err != nil {
		return nil, bad("%v", err)
	}
	if c.OS != "linux" {
		return nil, bad("os %q, want linux", c.OS)
	}
	if c.Arch != "amd64" && c.Arch != "arm64" {
		return nil, bad("arch %q is neither amd64 nor arm64", c.Arch)
	}
	if c.MinCPUs < 0 || c.MinMemoryBytes < 0 {
		return nil, bad("negative minimum (minCpus %d, minMemoryBytes %d)", c.MinCPUs, c.MinMemoryBytes)
	}
	if p := c.Process; p != nil {
		for _, e := range p.Env {
			if k, _, ok := strings.Cut(e, "="); !ok || k == "" {
				return nil, bad("process env entry %q is not KEY=value", e)
			}
		}
	}
	return &c, nil
}

// Process returns the default process of a Linux-guest image.
func (LinuxFormat) Process(config []byte) (*Process, error) {
	c, err := ParseLinuxConfig(config)
	if err != nil {
		return nil, err
	}
	return c.Process, nil
}

type linuxLayer struct {
	file   string
	gzip   bool
	size   int64 // <0: unknown until decoded
	digest digest.Digest
}

type linuxUnpacker struct {
	dir    string
	m      ocispec.Manifest
	c      *LinuxConfig
	layers []linuxLayer
	t      *tracker
	b      *budget
}

func (LinuxFormat) NewUnpacker(ctx context.Context, m ocispec.Manifest, config []byte, dir string, lim Limits) (Unpacker, error) {
	if m.Config.MediaType != MediaTypeLinuxConfig {
		return nil, invalidf("macvz Linux VM image: config media type %q, want %s", m.Config.MediaType, MediaTypeLinuxConfig)
	}
	c, err := ParseLinuxConfig(config)
	if err != nil {
		return nil, err
	}
	u := &linuxUnpacker{dir: dir, m: m, c: c, layers: make([]linuxLayer, len(m.Layers)), t: newTracker(len(m.Layers)), b: newBudget(dir, lim)}
	sizes := map[int]int64{}
	var kernels, initrds, disks int
	for i, l := range m.Layers {
		ll := linuxLayer{size: l.Size}
		switch l.MediaType {
		case MediaTypeLinuxKernel:
			kernels++
			ll.file = KernelFile
		case MediaTypeLinuxInitrd:
			initrds++
			ll.file = InitrdFile
		case MediaTypeLinuxDisk, MediaTypeLinuxDiskGzip:
			disks++
			ll.file = DiskFile
			ll.gzip = l.MediaType == MediaTypeLinuxDiskGzip
			if ll.gzip {
				ll.size = -1
			}
			size, ok, err := sizeAnnotation(i, l, AnnotationLinuxUncompressedSize)
			if err != nil {
				return nil, err
			}
			if ok {
				if !ll.gzip && size != l.Size {
					return nil, invalidf("%s: annotation %s=%d but the layer is uncompressed and %d bytes", layerName(i, l), AnnotationLinuxUncompressedSize, size, l.Size)
				}
				ll.size = size
			}
			if ll.digest, _, err = digestAnnotation(i, l, AnnotationLinuxUncompressedDigest); err != nil {
				return nil, err
			}
			if _, err := newHash(i, l, ll.digest); err != nil {
				return nil, err
			}
		default:
			return nil, notImplementedf("macvz Linux VM image: %s: unknown layer media type", layerName(i, l))
		}
		u.layers[i] = ll
		// A gzip disk without a size annotation takes at least its blob
		// size; the cap stops it while it decodes.
		sizes[i] = l.Size
		if ll.size >= 0 {
			sizes[i] = ll.size
		}
	}
	if kernels != 1 {
		return nil, invalidf("macvz Linux VM image has %d layers of media type %s, want 1", kernels, MediaTypeLinuxKernel)
	}
	if initrds > 1 || disks > 1 {
		return nil, invalidf("macvz Linux VM image has %d initrd and %d disk layers, want at most one of each", initrds, disks)
	}
	if err := u.b.declared(m, sizes); err != nil {
		return nil, err
	}
	return u, nil
}

func (u *linuxUnpacker) Layer(i int) (io.WriteCloser, error) {
	if err := u.t.open(i); err != nil {
		return nil, err
	}
	l, desc := u.layers[i], u.m.Layers[i]
	if l.file != DiskFile {
		return fileWriter(u.t, u.b, i, desc, u.dir, l.file)
	}
	f, err := createSized(u.dir, DiskFile, max(l.size, 0))
	if err != nil {
		u.t.closed(i, err)
		return nil, err
	}
	d := openDirect(f)
	u.t.onAbort(func() { closeFiles(f, d) })
	h, _ := newHash(i, desc, l.digest)
	sw := &sparseWriter{f: f, limit: l.size, h: h, b: u.b, what: layerName(i, desc), d: newDirectStage(f, d)}
	var w io.WriteCloser = nopCloser{sw}
	if l.gzip {
		w = gunzipTo(u.t, sw)
	}
	return &layerWriter{w: w, i: i, t: u.t, finish: func() error {
		err := decodeErr(layerName(i, desc), w.Close())
		if err == nil {
			// What the direct stage holds lies before the size below.
			err = sw.flush()
		}
		size := l.size
		if err == nil && size < 0 {
			// Zero runs at the end were skipped: give the file its size.
			size = sw.n
			err = f.Truncate(size)
		}
		if err == nil {
			err = sw.verify(layerName(i, desc), size, l.digest)
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

func (u *linuxUnpacker) Finish(ctx context.Context) error {
	want := make([]int, len(u.layers))
	for i := range want {
		want[i] = i
	}
	if err := u.t.check(u.m, want); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	d := &Descriptor{
		Kind:           KindLinux,
		OS:             "linux",
		Arch:           u.c.Arch,
		KernelCmdline:  u.c.KernelCmdline,
		MinCPUs:        u.c.MinCPUs,
		MinMemoryBytes: u.c.MinMemoryBytes,
		Process:        u.c.Process,
	}
	for _, l := range u.layers {
		switch l.file {
		case KernelFile:
			d.Kernel = KernelFile
		case InitrdFile:
			d.Initrd = InitrdFile
		case DiskFile:
			d.Disk = DiskFile
		}
	}
	return WriteDescriptor(u.dir, d)
}

func (u *linuxUnpacker) Abort() { u.t.abort() }

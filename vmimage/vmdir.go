package vmimage

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"syscall"

	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// VM directories are VMs kept as files, the way the tools macvz's images
// come from keep them:
//
//   - Tart (~/.tart/vms/NAME): config.json (Tart's VMConfig), disk.img
//     (raw) and nvram.bin.
//   - macOS-vz-kubelet (the directory its OCI store unpacks an image
//     into, each file named by its layer's title): config.json (the
//     agoda config: hardwareModelData, machineIdData), disk.img and
//     aux.img.
//
// `macvz image import` makes an image of the same format from one
// (Pack), `macvz image push` sends it; the disk is never read for
// anything but its digests.

// ConfigFile is the name of a VM directory's config.
const ConfigFile = "config.json"

const oNoFollow = syscall.O_NOFOLLOW

// maxDirSmallFile bounds the files of a VM directory read into memory:
// the config, Tart's NVRAM (128 KiB on macOS).
const maxDirSmallFile = 64 << 20

// VMDir is a VM directory, read and checked.
type VMDir struct {
	Kind Kind
	Dir  string
	// Config is config.json as found.
	Config []byte
	// Files are the directory's files that go into a base under the
	// same names: the disk first.
	Files []string

	desc *Descriptor
}

// OpenDir reads and checks a VM directory. Its files must be regular
// files (a symbolic link is refused, never followed). A directory of
// neither kind, or a config that would not boot, is InvalidArgument;
// a format macvz cannot boot (Tart's ASIF disks) NotImplemented.
func OpenDir(dir string) (*VMDir, error) {
	cfg, err := readSmallFile(dir, ConfigFile)
	if err != nil {
		return nil, err
	}
	var probe map[string]json.RawMessage
	if err := json.Unmarshal(cfg, &probe); err != nil {
		return nil, invalidf("%s: not JSON: %v", filepath.Join(dir, ConfigFile), err)
	}
	v := &VMDir{Dir: dir, Config: cfg}
	switch {
	case probe["hardwareModelData"] != nil || probe["machineIdData"] != nil:
		v.Kind, v.Files = KindAgoda, []string{DiskFile, AuxFile}
		if v.desc, err = agodaDescriptor(cfg, "arm64"); err != nil {
			return nil, fmt.Errorf("%s: %w", dir, err)
		}
	case probe["version"] != nil:
		v.Kind, v.Files = KindTart, []string{DiskFile, NVRAMFile}
		if v.desc, err = tartDescriptor(cfg); err != nil {
			return nil, fmt.Errorf("%s: %w", dir, err)
		}
	default:
		return nil, invalidf("%s is neither a Tart VM directory (config.json with a version, disk.img, nvram.bin) nor a macOS-vz-kubelet one (config.json with hardwareModelData and machineIdData, disk.img, aux.img)", dir)
	}
	for _, f := range v.Files {
		if _, err := regularFile(dir, f); err != nil {
			return nil, err
		}
	}
	return v, nil
}

// regularFile stats dir/name without following a symbolic link and
// refuses anything but a regular file.
func regularFile(dir, name string) (os.FileInfo, error) {
	p := filepath.Join(dir, name)
	fi, err := os.Lstat(p)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("%s: missing: %w", p, errdefs.ErrInvalidArgument)
	}
	if err != nil {
		return nil, err
	}
	if !fi.Mode().IsRegular() {
		return nil, invalidf("%s is not a regular file (%s); a VM directory's files are never followed elsewhere", p, fi.Mode().Type())
	}
	return fi, nil
}

// readSmallFile reads a regular file of dir, refusing one larger than
// maxDirSmallFile.
func readSmallFile(dir, name string) ([]byte, error) {
	if _, err := regularFile(dir, name); err != nil {
		return nil, err
	}
	f, err := os.OpenFile(filepath.Join(dir, name), os.O_RDONLY|oNoFollow, 0)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxDirSmallFile+1))
	if err != nil {
		return nil, err
	}
	if len(b) > maxDirSmallFile {
		return nil, invalidf("%s is larger than %d bytes", filepath.Join(dir, name), maxDirSmallFile)
	}
	return b, nil
}

// Packed is an image made from a VM directory: its manifest, and the
// bytes of every blob but the disk's, which Remake makes again from
// the base when they are needed (a push).
type Packed struct {
	Kind     Kind
	Manifest ocispec.Manifest
	// Blobs are the config and the layers other than the disk, by
	// digest.
	Blobs map[digest.Digest][]byte
}

// PackProgress is told, as the disk is read, how many more of its
// bytes were read.
type PackProgress func(n int64)

// Pack makes the image of a VM directory from base, a directory holding
// clones of v.Files (so that a VM still writing its directory cannot
// change the disk between its digest and its use), and writes base's
// vm.json. The same files always make the same image (nothing in it
// depends on the time), so importing a directory twice gives one image.
func (v *VMDir) Pack(ctx context.Context, base string, workers int, progress PackProgress) (*Packed, error) {
	p := &Packed{Kind: v.Kind, Blobs: map[digest.Digest][]byte{}}
	add := func(mediaType string, b []byte, ann map[string]string) ocispec.Descriptor {
		d := ocispec.Descriptor{MediaType: mediaType, Digest: digest.FromBytes(b), Size: int64(len(b)), Annotations: ann}
		p.Blobs[d.Digest] = b
		return d
	}
	m := ocispec.Manifest{MediaType: ocispec.MediaTypeImageManifest}
	m.SchemaVersion = 2
	switch v.Kind {
	case KindTart:
		disk, err := os.Open(filepath.Join(base, DiskFile))
		if err != nil {
			return nil, err
		}
		defer disk.Close()
		chunks, err := TartChunks(ctx, disk, workers, progress)
		if err != nil {
			return nil, err
		}
		nvram, err := readSmallFile(base, NVRAMFile)
		if err != nil {
			return nil, err
		}
		oc, err := json.Marshal(map[string]any{
			"architecture": v.desc.Arch,
			"os":           v.desc.OS,
			"config":       map[string]any{"Labels": map[string]string{LabelTartDiskFormat: "raw"}},
		})
		if err != nil {
			return nil, err
		}
		m.Config = add(ocispec.MediaTypeImageConfig, oc, nil)
		m.Layers = append(m.Layers, add(MediaTypeTartConfig, v.Config, nil))
		m.Layers = append(m.Layers, chunks...)
		m.Layers = append(m.Layers, add(MediaTypeTartNVRAM, nvram, nil))
		var size int64
		for _, c := range chunks {
			n, _ := strconv.ParseInt(c.Annotations[AnnotationTartUncompressedSize], 10, 64)
			size += n
		}
		m.Annotations = map[string]string{AnnotationTartUncompressedDiskSize: strconv.FormatInt(size, 10), AnnotationPacker: PackerTartLZ4}
	case KindAgoda:
		// The disk is stored as-is (a layer without the uncompressed-*
		// annotations, which macOS-vz-kubelet reads as uncompressed): a
		// layer gzip made could not be made again byte for byte at push.
		disk, err := os.Open(filepath.Join(base, DiskFile))
		if err != nil {
			return nil, err
		}
		defer disk.Close()
		dd, err := fileLayer(ctx, disk, MediaTypeAgodaDisk, progress)
		if err != nil {
			return nil, err
		}
		dd.Annotations = map[string]string{ocispec.AnnotationTitle: DiskFile}
		aux, err := readSmallFile(base, AuxFile)
		if err != nil {
			return nil, err
		}
		m.ArtifactType = ArtifactTypeAgoda
		cfg := ocispec.DescriptorEmptyJSON
		cfg.Platform = &ocispec.Platform{OS: "darwin", Architecture: "arm64"}
		p.Blobs[cfg.Digest] = cfg.Data
		cfg.Data = nil
		m.Config = cfg
		m.Layers = []ocispec.Descriptor{
			dd,
			add(MediaTypeAgodaAux, aux, map[string]string{ocispec.AnnotationTitle: AuxFile}),
			add(MediaTypeAgodaConfig, v.Config, map[string]string{ocispec.AnnotationTitle: ConfigFile}),
		}
	default:
		return nil, notImplementedf("packing a %q VM directory", v.Kind)
	}
	p.Manifest = m
	if err := WriteDescriptor(base, v.desc); err != nil {
		return nil, err
	}
	return p, nil
}

// fileLayer describes a whole file stored as one layer as-is.
func fileLayer(ctx context.Context, f *os.File, mediaType string, progress PackProgress) (ocispec.Descriptor, error) {
	h := digest.Canonical.Digester()
	n, err := copyCtx(ctx, h.Hash(), f, progress)
	if err != nil {
		return ocispec.Descriptor{}, fmt.Errorf("reading %s: %w", f.Name(), err)
	}
	return ocispec.Descriptor{MediaType: mediaType, Digest: h.Digest(), Size: n}, nil
}

// copyCtx copies src to dst in 8 MiB reads, telling progress, until EOF
// or ctx ends.
func copyCtx(ctx context.Context, dst io.Writer, src io.Reader, progress PackProgress) (int64, error) {
	buf := make([]byte, 8<<20)
	var total int64
	for {
		if err := ctx.Err(); err != nil {
			return total, err
		}
		n, err := io.ReadFull(src, buf)
		if n > 0 {
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return total, werr
			}
			total += int64(n)
			if progress != nil {
				progress(int64(n))
			}
		}
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			return total, nil
		}
		if err != nil {
			return total, err
		}
	}
}

package imagestore

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"sort"
	"strings"

	"github.com/containerd/errdefs"
	"github.com/distribution/reference"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// Annotations that name an image of an OCI layout's index: the image
// spec's own, and the full name containerd's and BuildKit's exporters
// write.
const (
	annotationContainerdName = "io.containerd.image.name"
)

// importLayout imports the image of an OCI image layout that named
// picks through the pull's own path: blobs are read from the layout
// (never from outside it: the directory is opened as an os.Root, which
// refuses a symbolic link or ".." leading out), verified against their
// digests and sizes, unpacked, and recorded under named.
func (s *Store) importLayout(ctx context.Context, dir string, named reference.Named, prog *tracker) (Image, error) {
	root, err := os.OpenRoot(dir)
	if err != nil {
		return Image{}, err
	}
	defer root.Close()
	var layout ocispec.ImageLayout
	if err := readLayoutJSON(root, ocispec.ImageLayoutFile, &layout); err != nil {
		return Image{}, err
	}
	if layout.Version != ocispec.ImageLayoutVersion {
		return Image{}, fmt.Errorf("OCI layout %s: imageLayoutVersion %q, want %q: %w", dir, layout.Version, ocispec.ImageLayoutVersion, errdefs.ErrNotImplemented)
	}
	var idx ocispec.Index
	if err := readLayoutJSON(root, ocispec.ImageIndexFile, &idx); err != nil {
		return Image{}, err
	}
	top, err := pickLayoutImage(idx, named)
	if err != nil {
		return Image{}, fmt.Errorf("OCI layout %s: %w", dir, err)
	}
	p := &pullState{s: s, host: "OCI layout " + dir, prog: prog, fetcher: layoutFetcher{root: root}}
	return p.store(ctx, named, top, false)
}

func readLayoutJSON(root *os.Root, name string, v any) error {
	f, err := root.Open(name)
	if errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("OCI layout %s: no %s: %w", root.Name(), name, errdefs.ErrInvalidArgument)
	}
	if err != nil {
		return err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxManifestSize+1))
	if err != nil {
		return err
	}
	if len(b) > maxManifestSize {
		return fmt.Errorf("OCI layout %s: %s is larger than %d bytes: %w", root.Name(), name, maxManifestSize, errdefs.ErrInvalidArgument)
	}
	if err := json.Unmarshal(b, v); err != nil {
		return fmt.Errorf("OCI layout %s: %s: %v: %w", root.Name(), name, err, errdefs.ErrInvalidArgument)
	}
	return nil
}

// pickLayoutImage chooses the image of a layout's index: the only one,
// or the one whose name annotation is the reference's tag or the whole
// reference.
func pickLayoutImage(idx ocispec.Index, named reference.Named) (ocispec.Descriptor, error) {
	if len(idx.Manifests) == 0 {
		return ocispec.Descriptor{}, fmt.Errorf("index.json lists no image: %w", errdefs.ErrInvalidArgument)
	}
	if len(idx.Manifests) == 1 {
		return idx.Manifests[0], nil
	}
	want := map[string]bool{named.String(): true, reference.FamiliarString(named): true}
	if t, ok := named.(reference.Tagged); ok {
		want[t.Tag()] = true
	}
	var names []string
	for _, m := range idx.Manifests {
		for _, k := range []string{ocispec.AnnotationRefName, annotationContainerdName} {
			if n := m.Annotations[k]; n != "" {
				if want[n] {
					return m, nil
				}
				names = append(names, n)
			}
		}
	}
	sort.Strings(names)
	return ocispec.Descriptor{}, fmt.Errorf("index.json lists %d images and none is named %s (names: %s): %w", len(idx.Manifests), named, strings.Join(names, ", "), errdefs.ErrNotFound)
}

// layoutFetcher reads blobs from an OCI layout's blobs/ALG/HEX.
type layoutFetcher struct{ root *os.Root }

func (l layoutFetcher) Fetch(ctx context.Context, desc ocispec.Descriptor) (io.ReadCloser, error) {
	if err := desc.Digest.Validate(); err != nil {
		return nil, fmt.Errorf("blob digest %q: %v: %w", desc.Digest, err, errdefs.ErrInvalidArgument)
	}
	// Validate leaves only [a-z0-9+._-] in the algorithm and hex in the
	// encoded part: the path stays under blobs/.
	p := path.Join(ocispec.ImageBlobsDir, desc.Digest.Algorithm().String(), desc.Digest.Encoded())
	f, err := l.root.Open(p)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("OCI layout %s has no blob %s (%s): %w", l.root.Name(), desc.Digest, desc.MediaType, errdefs.ErrNotFound)
	}
	if err != nil {
		return nil, err
	}
	if fi, err := f.Stat(); err != nil || !fi.Mode().IsRegular() {
		f.Close()
		return nil, fmt.Errorf("OCI layout %s: %s is not a regular file: %w", l.root.Name(), p, errdefs.ErrInvalidArgument)
	}
	return f, nil
}

package imagetree

import (
	"archive/tar"
	"context"
	"fmt"
	"io"

	"github.com/containerd/containerd/v2/pkg/archive"
	"github.com/containerd/containerd/v2/pkg/archive/compression"
	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
)

// ApplyLayer applies one OCI layer (a tar, plain or compressed as its
// media type allows: gzip, zstd) onto dir, whiteouts included, through
// containerd's archive.Apply, which keeps every path beneath dir. Device
// nodes and FIFOs are left out. The uncompressed stream must have the
// digest diffID (the image config's rootfs.diff_ids entry for it).
func ApplyLayer(ctx context.Context, r io.Reader, dir string, diffID digest.Digest, b *Budget) error {
	if err := diffID.Validate(); err != nil {
		return fmt.Errorf("layer diff ID %q: %v: %w", diffID, err, errdefs.ErrInvalidArgument)
	}
	dr, err := compression.DecompressStream(r)
	if err != nil {
		return fmt.Errorf("layer %s: %v: %w", diffID, err, errdefs.ErrDataLoss)
	}
	defer dr.Close()
	v := diffID.Verifier()
	cr := &countingReader{r: io.TeeReader(dr, v), b: b}
	if _, err := archive.Apply(ctx, dir, cr, archive.WithFilter(treeEntry)); err != nil {
		return fmt.Errorf("layer %s: %w", diffID, err)
	}
	// The tar's end-of-archive blocks and any trailing data count too.
	if _, err := io.Copy(io.Discard, cr); err != nil {
		return fmt.Errorf("layer %s: %w", diffID, err)
	}
	if !v.Verified() {
		return fmt.Errorf("layer %s: the uncompressed content does not have its diff ID: %w", diffID, errdefs.ErrDataLoss)
	}
	return nil
}

// treeEntry keeps what a tree holds: not device nodes or FIFOs.
func treeEntry(h *tar.Header) (bool, error) {
	switch h.Typeflag {
	case tar.TypeBlock, tar.TypeChar, tar.TypeFifo:
		return false, nil
	}
	return true, nil
}

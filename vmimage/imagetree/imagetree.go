// Package imagetree unpacks an image into the read-only file tree an
// image volume (a CRI Mount with an image) shows: an ordinary OCI image's
// layers applied in order with their whiteouts, or a macvz Linux VM
// image's initramfs, which is its guest's root file system. A registry is
// untrusted: every name, size, mode and link target in a layer is the
// image author's, so unpacking stays beneath the tree (os.Root, or
// containerd's archive.Apply for tar layers), counts every byte against a
// cap, verifies each layer's uncompressed digest, and leaves out what
// means something on the host rather than in the tree (device nodes,
// FIFOs, sockets): the tree is shared with VMs, and a device node read
// through a share would be the host's device.
package imagetree

import (
	"errors"
	"fmt"
	"io"

	"github.com/containerd/errdefs"
)

// Budget caps the bytes an image unpacks to, across all its layers.
type Budget struct {
	// Max is the cap (0: none); Setting names where it is configured.
	Max     int64
	Setting string
	used    int64
}

// take counts n more bytes, failing once the cap is passed.
func (b *Budget) take(n int64) error {
	if n < 0 {
		return fmt.Errorf("a negative size: %w", errdefs.ErrDataLoss)
	}
	b.used += n
	if b.Max > 0 && b.used > b.Max {
		return fmt.Errorf("the image unpacks to more than %d bytes (%s): %w", b.Max, b.Setting, errdefs.ErrInvalidArgument)
	}
	return nil
}

// Used is how many bytes have been counted.
func (b *Budget) Used() int64 { return b.used }

// countingReader counts what it reads against a budget.
type countingReader struct {
	r io.Reader
	b *Budget
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	if n > 0 {
		if berr := c.b.take(int64(n)); berr != nil {
			return n, berr
		}
	}
	return n, err
}

// errSkip marks an entry left out on purpose.
var errSkip = errors.New("left out")

package qemu

import (
	"bytes"
	"context"
	"fmt"
	"os"
)

// ramPage is the unit writeRAMFile skips when it is all zeros.
const ramPage = 4096

// writeRAMFile copies the guest RAM in src (the memfd, read while the VM
// is paused) to a new file dst, leaving out the pages that are all zeros
// (holes in dst, which read as zeros): a guest uses a fraction of its
// RAM, and a restore maps only what is there. The file is synced and
// renamed into place, so dst is whole or absent.
func writeRAMFile(ctx context.Context, src *os.File, dst string) (retErr error) {
	fi, err := src.Stat()
	if err != nil {
		return err
	}
	size := fi.Size()
	tmp := dst + ".tmp"
	out, err := os.OpenFile(tmp, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	defer func() {
		if retErr != nil {
			out.Close()
			os.Remove(tmp)
		}
	}()
	if err := out.Truncate(size); err != nil {
		return err
	}
	buf := make([]byte, 1<<20)
	zero := make([]byte, ramPage)
	for off := int64(0); off < size; off += int64(len(buf)) {
		if err := ctx.Err(); err != nil {
			return err
		}
		b := buf[:min(int64(len(buf)), size-off)]
		if _, err := src.ReadAt(b, off); err != nil {
			return fmt.Errorf("reading the guest RAM at %d: %w", off, err)
		}
		// Runs of pages with data, each written at once.
		for i := 0; i < len(b); {
			if bytes.Equal(b[i:min(i+ramPage, len(b))], zero[:min(ramPage, len(b)-i)]) {
				i += ramPage
				continue
			}
			j := i + ramPage
			for j < len(b) && !bytes.Equal(b[j:min(j+ramPage, len(b))], zero[:min(ramPage, len(b)-j)]) {
				j += ramPage
			}
			j = min(j, len(b))
			if _, err := out.WriteAt(b[i:j], off+int64(i)); err != nil {
				return err
			}
			i = j
		}
	}
	if err := out.Sync(); err != nil {
		return err
	}
	if err := out.Close(); err != nil {
		return err
	}
	return os.Rename(tmp, dst)
}

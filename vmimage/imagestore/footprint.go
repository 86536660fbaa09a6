package imagestore

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"

	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
)

// Footprint is what an image takes in the store: its blobs, its unpacked
// VM base and its unpacked tree (image volumes), when it has them.
type Footprint struct {
	// Logical is the files' lengths: a sparse VM disk counts whole.
	Logical int64
	// Allocated is the space they take (st_blocks*512): holes are free,
	// and a file with several names counts once. Extents an APFS clone
	// or a reflink shares with another file are counted here too: the
	// file system does not say which are shared.
	Allocated int64
}

// Footprint measures img's blobs (walked from its target as garbage
// collection walks them) and its committed base and tree. A blob another
// image shares counts in both images' footprints.
func (s *Store) Footprint(ctx context.Context, img Image) (Footprint, error) {
	var fp Footprint
	seen := map[fileKey]bool{}
	blobs := map[digest.Digest]bool{}
	if err := s.walkImage(ctx, img, blobs); err != nil {
		return Footprint{}, err
	}
	for d := range blobs {
		if d.Validate() != nil {
			continue
		}
		fi, err := os.Lstat(s.blobPath(d))
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return Footprint{}, err
		}
		fp.add(fi, seen)
	}
	dirs, ok := s.sn.(committedDirs)
	if !ok {
		return fp, nil
	}
	for _, name := range []string{BaseName(img.Manifest.Digest), TreeName(img.Manifest.Digest)} {
		dir, err := dirs.CommittedDir(ctx, name)
		if errdefs.IsNotFound(err) {
			continue
		}
		if err != nil {
			return Footprint{}, err
		}
		err = filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			if err := ctx.Err(); err != nil {
				return err
			}
			fi, err := d.Info()
			if err != nil {
				return err
			}
			fp.add(fi, seen)
			return nil
		})
		if err != nil {
			return Footprint{}, fmt.Errorf("measuring image %s's unpacked files: %w", img.Name, err)
		}
	}
	return fp, nil
}

// blobPath is where containerd's local content store keeps a blob.
func (s *Store) blobPath(d digest.Digest) string {
	return filepath.Join(s.opts.Root, "content", "blobs", d.Algorithm().String(), d.Encoded())
}

type fileKey struct{ dev, ino uint64 }

// add counts one file (a directory counts its allocation only).
func (fp *Footprint) add(fi fs.FileInfo, seen map[fileKey]bool) {
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		if fi.Mode().IsRegular() {
			fp.Logical += fi.Size()
			fp.Allocated += fi.Size()
		}
		return
	}
	k := fileKey{uint64(st.Dev), uint64(st.Ino)}
	if seen[k] {
		return
	}
	seen[k] = true
	if fi.Mode().IsRegular() {
		fp.Logical += fi.Size()
	}
	fp.Allocated += int64(st.Blocks) * 512
}

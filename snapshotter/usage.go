package snapshotter

import (
	"context"
	"io/fs"
	"path/filepath"

	"github.com/containerd/containerd/v2/core/snapshots"
)

type fileID struct{ dev, ino uint64 }

// diskUsage measures a snapshot directory: the bytes allocated to its
// entries (the directory itself included) and their number, counting a
// file with several names once.
func diskUsage(ctx context.Context, dir string) (snapshots.Usage, error) {
	var u snapshots.Usage
	seen := map[fileID]struct{}{}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
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
		size, id, ok := allocation(fi)
		if ok {
			if _, dup := seen[id]; dup {
				return nil
			}
			seen[id] = struct{}{}
		}
		u.Size += size
		u.Inodes++
		return nil
	})
	if err != nil {
		return snapshots.Usage{}, err
	}
	return u, nil
}

// Package snapshotter stores VM disks as a containerd snapshots.Snapshotter.
//
// A snapshot is a plain directory of files (disk.img, nvram.bin, kernel,
// initrd, vm.json, ...). Committed snapshots are unpacked VM images (the
// bases); Prepare gives a sandbox a writable directory holding a clone of
// every file of its base, and View a read-only one. A clone is clonefile(2)
// on APFS and FICLONE on XFS/btrfs, both O(1) whatever the disk size; where
// the file system cannot share extents the files are copied sparsely, which
// is logged once as slow.
//
// Layout under the root directory:
//
//	metadata.db        containerd's snapshot MetaStore (bbolt): names, kinds,
//	                   parents, labels, usage of committed snapshots
//	snapshots/<id>/    the files of snapshot <id> (id from the MetaStore)
//	snapshots/new-*    a snapshot being built; renamed to <id> when complete
//	snapshots/rm-*     a snapshot being deleted
//
// Bases and clones live under one root, hence on one file system, because a
// clone across file systems fails with EXDEV (and would be a full copy).
//
// As in containerd's native snapshotter, nothing is layered: every
// Prepare/View gets its own full tree (here cloned rather than copied), so a
// parent's files are never written through a child. The Snapshotter mounts
// nothing; Mounts returns bind mounts, and callers that need the path (to
// hand disk.img to a VM) use Dir. Call Cleanup once at start to delete what
// a crash left behind.
package snapshotter

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/containerd/v2/core/snapshots/storage"
	"github.com/containerd/errdefs"
	bolt "go.etcd.io/bbolt"
)

const (
	snapshotsDir  = "snapshots"
	newPrefix     = "new-"
	removedPrefix = "rm-"
)

// Snapshotter implements snapshots.Snapshotter and snapshots.Cleaner for VM
// disk directories. It is safe for concurrent use.
type Snapshotter struct {
	root string
	ms   *storage.MetaStore

	// slowOnce makes the "cannot reflink" warning appear once per
	// Snapshotter rather than once per file or per sandbox.
	slowOnce sync.Once

	mu sync.Mutex
	// busy holds the names of directories under snapshots/ that are being
	// built (new-*) or deleted (rm-*) outside a metadata transaction, so
	// that Cleanup leaves them alone.
	busy  map[string]struct{}
	stats CloneStats
}

var (
	_ snapshots.Snapshotter = (*Snapshotter)(nil)
	_ snapshots.Cleaner     = (*Snapshotter)(nil)
)

// New opens (or creates) a Snapshotter rooted at root.
//
// Leftovers of a crash (half-built or half-deleted directories) are not
// removed here; call Cleanup once at start.
func New(root string) (*Snapshotter, error) {
	if root == "" {
		return nil, fmt.Errorf("snapshotter root is empty: %w", errdefs.ErrInvalidArgument)
	}
	abs, err := filepath.Abs(root)
	if err != nil {
		return nil, err
	}
	// 0700: the disks of every sandbox are under here.
	if err := os.MkdirAll(filepath.Join(abs, snapshotsDir), 0o700); err != nil {
		return nil, fmt.Errorf("create snapshotter root: %w", err)
	}
	// bbolt locks the database file; without a timeout a second daemon on
	// the same root would hang on its first transaction instead of failing.
	ms, err := storage.NewMetaStore(filepath.Join(abs, "metadata.db"), func(o *bolt.Options) error {
		o.Timeout = openTimeout
		return nil
	})
	if err != nil {
		return nil, err
	}
	// Open the database now (the MetaStore opens it on first use), so
	// that a locked or corrupt database fails New, not a later Prepare.
	if err := ms.WithTransaction(context.Background(), false, func(context.Context) error { return nil }); err != nil {
		return nil, fmt.Errorf("open snapshotter metadata in %s (is another process using this root?): %w", abs, err)
	}
	return &Snapshotter{root: abs, ms: ms, busy: map[string]struct{}{}}, nil
}

// openTimeout bounds the wait for another process's lock on metadata.db
// (a variable for the test).
var openTimeout = 5 * time.Second

// Root returns the snapshotter's root directory.
func (s *Snapshotter) Root() string { return s.root }

// Stat returns the info of the snapshot called key.
func (s *Snapshotter) Stat(ctx context.Context, key string) (info snapshots.Info, err error) {
	err = s.ms.WithTransaction(ctx, false, func(ctx context.Context) error {
		_, info, _, err = storage.GetInfo(ctx, key)
		return err
	})
	if err != nil {
		return snapshots.Info{}, err
	}
	return info, nil
}

// Update changes the labels of a snapshot (the only mutable fields, see
// storage.UpdateInfo for the field paths).
func (s *Snapshotter) Update(ctx context.Context, info snapshots.Info, fieldpaths ...string) (_ snapshots.Info, err error) {
	err = s.ms.WithTransaction(ctx, true, func(ctx context.Context) error {
		info, err = storage.UpdateInfo(ctx, info, fieldpaths...)
		return err
	})
	if err != nil {
		return snapshots.Info{}, err
	}
	return info, nil
}

// Usage returns the disk space and inodes a snapshot's directory uses.
//
// Size is the space allocated to the files (st_blocks*512), not their
// apparent size, so a sparse disk counts only its written parts. Extents
// shared between reflinked clones are counted in every file that shares
// them: the file system does not say which extents are shared, so the sum
// over a base and its clones overstates the real use. Committed snapshots
// report the usage measured when they were committed; active snapshots and
// views are measured now.
func (s *Snapshotter) Usage(ctx context.Context, key string) (usage snapshots.Usage, err error) {
	var (
		id   string
		info snapshots.Info
	)
	err = s.ms.WithTransaction(ctx, false, func(ctx context.Context) error {
		id, info, usage, err = storage.GetInfo(ctx, key)
		return err
	})
	if err != nil {
		return snapshots.Usage{}, err
	}
	if info.Kind != snapshots.KindCommitted {
		return diskUsage(ctx, s.snapshotDir(id))
	}
	return usage, nil
}

// Mounts returns the mounts of an active snapshot or view.
func (s *Snapshotter) Mounts(ctx context.Context, key string) (_ []mount.Mount, err error) {
	var sn storage.Snapshot
	err = s.ms.WithTransaction(ctx, false, func(ctx context.Context) error {
		sn, err = storage.GetSnapshot(ctx, key)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("mounts of snapshot %q: %w", key, err)
	}
	return s.mounts(sn), nil
}

// Prepare creates an active (writable) snapshot called key whose directory
// holds a clone of every file of the committed snapshot parent (empty when
// parent is "").
func (s *Snapshotter) Prepare(ctx context.Context, key, parent string, opts ...snapshots.Opt) ([]mount.Mount, error) {
	return s.create(ctx, snapshots.KindActive, key, parent, opts)
}

// View creates a read-only snapshot of parent.
//
// A view gets its own clone of the parent, like Prepare, rather than the
// parent's directory: a VM that opens a disk read-write by mistake (the
// "ro" option is only advisory for a directory that is not mounted) must
// not be able to corrupt a base every sandbox shares. On a reflink file
// system this costs nothing; on others it is a copy.
func (s *Snapshotter) View(ctx context.Context, key, parent string, opts ...snapshots.Opt) ([]mount.Mount, error) {
	return s.create(ctx, snapshots.KindView, key, parent, opts)
}

// CommittedDir is the directory of a committed snapshot, for a reader
// that only reads its files and keeps the snapshot from being removed
// meanwhile (a Linux guest's kernel and initrd, which QEMU reads once at
// start: cloning them for every VM would only cost time and space).
// Anything that may write needs Prepare.
func (s *Snapshotter) CommittedDir(ctx context.Context, name string) (string, error) {
	var dir string
	err := s.ms.WithTransaction(ctx, false, func(ctx context.Context) error {
		id, info, _, err := storage.GetInfo(ctx, name)
		if err != nil {
			return fmt.Errorf("snapshot %q: %w", name, err)
		}
		if info.Kind != snapshots.KindCommitted {
			return fmt.Errorf("snapshot %q is %v, not committed: %w", name, info.Kind, errdefs.ErrFailedPrecondition)
		}
		dir = s.snapshotDir(id)
		return nil
	})
	return dir, err
}

// Commit turns the active snapshot key into the committed snapshot name.
// The directory stays where it is (its id does not change); its usage is
// measured now and stored.
func (s *Snapshotter) Commit(ctx context.Context, name, key string, opts ...snapshots.Opt) error {
	return s.ms.WithTransaction(ctx, true, func(ctx context.Context) error {
		id, info, _, err := storage.GetInfo(ctx, key)
		if err != nil {
			return err
		}
		if info.Kind != snapshots.KindActive {
			return fmt.Errorf("commit %q: snapshot %q is %v, not active: %w", name, key, info.Kind, errdefs.ErrFailedPrecondition)
		}
		usage, err := diskUsage(ctx, s.snapshotDir(id))
		if err != nil {
			return err
		}
		if _, err := storage.CommitActive(ctx, key, name, usage, opts...); err != nil {
			return fmt.Errorf("commit %q as %q: %w", key, name, err)
		}
		return nil
	})
}

// Remove deletes a snapshot and its directory. A snapshot that other
// snapshots were prepared or viewed from cannot be removed
// (errdefs.ErrFailedPrecondition) until they are.
func (s *Snapshotter) Remove(ctx context.Context, key string) error {
	var dir, removed string
	err := s.ms.WithTransaction(ctx, true, func(ctx context.Context) error {
		id, _, err := storage.Remove(ctx, key)
		if err != nil {
			return fmt.Errorf("remove snapshot %q: %w", key, err)
		}
		// Move the directory aside inside the transaction, so that the
		// name <id> is free if the metadata commits, and delete it after:
		// deleting a large disk must not hold the metadata write lock.
		dir = s.snapshotDir(id)
		name := removedPrefix + id
		s.setBusy(name, true)
		removed = filepath.Join(s.root, snapshotsDir, name)
		if err := os.Rename(dir, removed); err != nil {
			s.setBusy(name, false)
			removed = ""
			if !errors.Is(err, os.ErrNotExist) {
				return fmt.Errorf("remove snapshot %q: %w", key, err)
			}
		}
		return nil
	})
	if err != nil {
		if removed != "" {
			// The metadata still has the snapshot: put its files back.
			if rerr := os.Rename(removed, dir); rerr != nil {
				slog.ErrorContext(ctx, "snapshotter: cannot restore directory after failed remove", "key", key, "path", removed, "err", rerr)
			}
			s.setBusy(filepath.Base(removed), false)
		}
		return err
	}
	if removed != "" {
		defer s.setBusy(filepath.Base(removed), false)
		if err := os.RemoveAll(removed); err != nil {
			// The snapshot is gone; Cleanup deletes what is left.
			slog.WarnContext(ctx, "snapshotter: cannot delete removed snapshot's files", "key", key, "path", removed, "err", err)
		}
	}
	return nil
}

// Walk calls fn for every snapshot that matches any of filters (containerd
// filter syntax: `kind==committed`, `labels."a"==b`, `parent==base`; the
// comma-separated conditions of one filter must all match).
func (s *Snapshotter) Walk(ctx context.Context, fn snapshots.WalkFunc, filters ...string) error {
	return s.ms.WithTransaction(ctx, false, func(ctx context.Context) error {
		return storage.WalkInfo(ctx, fn, filters...)
	})
}

// Cleanup deletes directories under snapshots/ that no snapshot owns:
// leftovers of a crash while a snapshot was being built or removed. It runs
// in a metadata write transaction, so no snapshot appears meanwhile.
func (s *Snapshotter) Cleanup(ctx context.Context) error {
	return s.ms.WithTransaction(ctx, true, func(ctx context.Context) error {
		ids, err := storage.IDMap(ctx)
		if err != nil && !errors.Is(err, errdefs.ErrNotFound) {
			// NotFound: no snapshot was ever created, everything is a leftover.
			return err
		}
		entries, err := os.ReadDir(filepath.Join(s.root, snapshotsDir))
		if err != nil {
			return err
		}
		var errs []error
		for _, e := range entries {
			if _, ok := ids[e.Name()]; ok || s.isBusy(e.Name()) {
				continue
			}
			p := filepath.Join(s.root, snapshotsDir, e.Name())
			slog.InfoContext(ctx, "snapshotter: deleting orphaned directory", "path", p)
			if err := os.RemoveAll(p); err != nil {
				errs = append(errs, err)
			}
		}
		return errors.Join(errs...)
	})
}

// Close releases the metadata database.
func (s *Snapshotter) Close() error {
	return s.ms.Close()
}

// create is Prepare and View.
//
// The clone happens outside any write transaction: where the file system
// cannot reflink it is a full copy that may take minutes, and bbolt has a
// single writer, so holding the transaction would stall every other
// Prepare, Commit and Remove. Instead the parent is resolved in a read
// transaction, cloned into a temporary directory, and the snapshot is
// created in a write transaction that checks the parent is still the one
// cloned and renames the directory into place. Either the metadata and the
// complete directory both exist, or neither does.
func (s *Snapshotter) create(ctx context.Context, kind snapshots.Kind, key, parent string, opts []snapshots.Opt) ([]mount.Mount, error) {
	if key == "" {
		return nil, fmt.Errorf("snapshot key is empty: %w", errdefs.ErrInvalidArgument)
	}

	var parentID string
	err := s.ms.WithTransaction(ctx, false, func(ctx context.Context) error {
		// Fail early instead of after a possibly long copy; the write
		// transaction below checks again.
		if _, _, _, err := storage.GetInfo(ctx, key); err == nil {
			return fmt.Errorf("snapshot %q: %w", key, errdefs.ErrAlreadyExists)
		} else if !errors.Is(err, errdefs.ErrNotFound) {
			return err
		}
		if parent == "" {
			return nil
		}
		id, info, _, err := storage.GetInfo(ctx, parent)
		if err != nil {
			return fmt.Errorf("parent %q: %w", parent, err)
		}
		if info.Kind != snapshots.KindCommitted {
			return fmt.Errorf("parent %q is %v, not committed: %w", parent, info.Kind, errdefs.ErrInvalidArgument)
		}
		parentID = id
		return nil
	})
	if err != nil {
		return nil, err
	}

	tmp, err := s.mkTemp()
	if err != nil {
		return nil, err
	}
	tmpName := filepath.Base(tmp)
	defer func() {
		if tmp != "" {
			if err := os.RemoveAll(tmp); err != nil {
				slog.WarnContext(ctx, "snapshotter: cannot delete temporary directory", "path", tmp, "err", err)
			}
		}
		s.setBusy(tmpName, false)
	}()

	if parentID != "" {
		if err := s.cloneTree(ctx, s.snapshotDir(parentID), tmp); err != nil {
			return nil, fmt.Errorf("clone %q for snapshot %q: %w", parent, key, err)
		}
	} else if err := os.Chmod(tmp, 0o755); err != nil {
		return nil, err
	}

	var (
		sn    storage.Snapshot
		final string
	)
	err = s.ms.WithTransaction(ctx, true, func(ctx context.Context) error {
		var err error
		sn, err = storage.CreateSnapshot(ctx, kind, key, parent, opts...)
		if err != nil {
			return fmt.Errorf("create snapshot %q: %w", key, err)
		}
		if parentID != "" && (len(sn.ParentIDs) == 0 || sn.ParentIDs[0] != parentID) {
			// The parent was removed and re-created while we cloned it.
			return fmt.Errorf("parent %q changed while it was cloned: %w", parent, errdefs.ErrAborted)
		}
		dir := s.snapshotDir(sn.ID)
		// Ids are handed out inside write transactions and a rolled back
		// transaction hands its id out again, so a directory already
		// called <id> is the leftover of a crash between the rename and the
		// metadata commit: nothing refers to it.
		if _, err := os.Lstat(dir); err == nil {
			slog.WarnContext(ctx, "snapshotter: replacing orphaned directory", "path", dir)
			if err := os.RemoveAll(dir); err != nil {
				return err
			}
		}
		if err := os.Rename(tmp, dir); err != nil {
			return err
		}
		final = dir
		// The metadata commit is durable (bbolt fsyncs); make the rename
		// durable before it, so a crash never leaves a snapshot whose
		// directory is still called new-*.
		return syncDir(filepath.Dir(dir))
	})
	if err != nil {
		if final != "" {
			// The rename happened but the metadata did not commit.
			if rerr := os.Rename(final, tmp); rerr != nil {
				slog.ErrorContext(ctx, "snapshotter: cannot undo snapshot directory", "path", final, "err", rerr)
			}
		}
		return nil, err
	}
	tmp = ""
	return s.mounts(sn), nil
}

// mkTemp creates snapshots/new-* and marks it busy in one step, so that a
// concurrent Cleanup never sees it unmarked.
func (s *Snapshotter) mkTemp() (string, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	dir, err := os.MkdirTemp(filepath.Join(s.root, snapshotsDir), newPrefix)
	if err != nil {
		return "", fmt.Errorf("create snapshot directory: %w", err)
	}
	s.busy[filepath.Base(dir)] = struct{}{}
	return dir, nil
}

func (s *Snapshotter) setBusy(name string, busy bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if busy {
		s.busy[name] = struct{}{}
	} else {
		delete(s.busy, name)
	}
}

func (s *Snapshotter) isBusy(name string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	_, ok := s.busy[name]
	return ok
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

func (s *Snapshotter) snapshotDir(id string) string {
	return filepath.Join(s.root, snapshotsDir, id)
}

func (s *Snapshotter) mounts(sn storage.Snapshot) []mount.Mount {
	mode := "rw"
	if sn.Kind == snapshots.KindView {
		mode = "ro"
	}
	return []mount.Mount{{
		Type:    "bind",
		Source:  s.snapshotDir(sn.ID),
		Options: []string{"rbind", mode},
	}}
}

// Dir returns the directory of a snapshot from the mounts Prepare, View or
// Mounts returned: callers that run a VM need the disk files, not a mount.
func Dir(mounts []mount.Mount) (string, error) {
	if len(mounts) != 1 {
		return "", fmt.Errorf("want 1 bind mount of a snapshot directory, got %d mounts: %w", len(mounts), errdefs.ErrInvalidArgument)
	}
	m := mounts[0]
	if m.Type != "bind" && m.Type != "rbind" {
		return "", fmt.Errorf("mount type %q is not a bind mount: %w", m.Type, errdefs.ErrInvalidArgument)
	}
	if m.Source == "" || !filepath.IsAbs(m.Source) {
		return "", fmt.Errorf("bind mount source %q is not an absolute path: %w", m.Source, errdefs.ErrInvalidArgument)
	}
	return filepath.Clean(m.Source), nil
}

// ReadOnly reports whether the mounts are read-only (a View).
func ReadOnly(mounts []mount.Mount) bool {
	for _, m := range mounts {
		for _, o := range m.Options {
			if strings.TrimSpace(o) == "ro" {
				return true
			}
		}
	}
	return false
}

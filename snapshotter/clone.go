package snapshotter

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"github.com/containerd/errdefs"
)

// Method says how a file was cloned.
type Method string

const (
	// MethodNone: nothing was cloned yet (or the tree had no regular file).
	MethodNone Method = ""
	// MethodReflink: the clone shares the source's extents (clonefile(2)
	// on darwin, FICLONE on linux). O(1), no space used until written.
	MethodReflink Method = "reflink"
	// MethodSparseCopy: the file system cannot share extents, the data was
	// copied, skipping holes and all-zero blocks. Time and space grow with
	// the amount of data.
	MethodSparseCopy Method = "sparse-copy"
)

// CloneStats counts the files the Snapshotter cloned, by method.
type CloneStats struct {
	Reflinked int64 // files cloned by reflink
	Copied    int64 // files copied sparsely because reflink failed
	// Last is the method of the most recent Prepare/View that cloned a
	// regular file: MethodSparseCopy if any of its files had to be
	// copied, else MethodReflink.
	Last Method
}

// CloneMethod returns the method of the most recent Prepare or View that
// cloned at least one file (MethodNone before that).
func (s *Snapshotter) CloneMethod() Method {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.stats.Last
}

// CloneStats returns the counts of cloned files since New.
func (s *Snapshotter) CloneStats() CloneStats {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.stats
}

// CloneFile clones the regular file src to dst, which must not exist, on
// the same file system: a reflink when the file system can share extents,
// else a sparse copy. The mode bits are copied; ownership and times are
// not. It is what Prepare does per file, for callers that clone a single
// file (e.g. a disk saved with a VM's state).
func CloneFile(src, dst string) (Method, error) {
	m, _, err := cloneFile(src, dst)
	if err != nil {
		return MethodNone, err
	}
	fi, err := os.Stat(src)
	if err == nil {
		err = os.Chmod(dst, modeBits(fi.Mode()))
	}
	if err != nil {
		_ = os.Remove(dst)
		return MethodNone, err
	}
	return m, nil
}

// CloneTree clones src, a directory or a regular file, to dst, which
// must not exist (on the same file system for reflinks): a directory
// with its contents as Prepare clones a snapshot's (symlinks kept as
// links, never followed; devices, fifos and sockets refused), a file as
// CloneFile does. What it made is removed again when it fails.
func CloneTree(ctx context.Context, src, dst string) error {
	fi, err := os.Lstat(src)
	if err != nil {
		return err
	}
	switch {
	case fi.Mode().IsRegular():
		if _, _, err := cloneFile(src, dst); err != nil {
			return err
		}
		if err := copyMetadata(dst, fi); err != nil {
			os.Remove(dst)
			return err
		}
		return nil
	case !fi.IsDir():
		return fmt.Errorf("cloning %s: neither a directory nor a regular file (%s): %w", src, fi.Mode().Type(), errdefs.ErrInvalidArgument)
	}
	if err := os.Mkdir(dst, 0o700); err != nil {
		return err
	}
	var tc treeClone
	if err := cloneDir(ctx, src, dst, &tc); err != nil {
		os.RemoveAll(dst)
		return err
	}
	if err := copyMetadata(dst, fi); err != nil {
		os.RemoveAll(dst)
		return err
	}
	return nil
}

// cloneFile clones src to a new file dst. When it fell back to a copy,
// reason is the error the reflink failed with.
func cloneFile(src, dst string) (m Method, reason error, err error) {
	err = reflink(src, dst)
	if err == nil {
		return MethodReflink, nil, nil
	}
	if !reflinkUnsupported(err) {
		return MethodNone, nil, err
	}
	if err := sparseCopy(src, dst); err != nil {
		return MethodNone, nil, err
	}
	return MethodSparseCopy, err, nil
}

// treeClone accumulates what one cloneTree did.
type treeClone struct {
	reflinked, copied int64
	reason            error // why the first copy was not a reflink
}

// cloneTree clones the contents of directory src into the existing, empty
// directory dst: directories, regular files (cloned) and symlinks, with
// their modes, ownership (when running as root) and modification times.
// Anything else (devices, fifos, sockets) has no place in a VM image and is
// an error rather than silently missing from the clone. Hard links are not
// preserved: each name gets its own clone.
func (s *Snapshotter) cloneTree(ctx context.Context, src, dst string) error {
	var tc treeClone
	err := cloneDir(ctx, src, dst, &tc)

	s.mu.Lock()
	s.stats.Reflinked += tc.reflinked
	s.stats.Copied += tc.copied
	switch {
	case tc.copied > 0:
		s.stats.Last = MethodSparseCopy
	case tc.reflinked > 0:
		s.stats.Last = MethodReflink
	}
	s.mu.Unlock()

	if tc.copied > 0 {
		s.slowOnce.Do(func() {
			slog.WarnContext(ctx, "snapshotter: the file system cannot reflink, VM disks are cloned by a sparse copy (slow, and each clone takes space); put the root on APFS, XFS (reflink=1) or btrfs",
				"root", s.root, "reason", tc.reason)
		})
	}
	if err != nil {
		return err
	}
	// The root last: adding entries changed its modification time.
	fi, err := os.Lstat(src)
	if err != nil {
		return err
	}
	return copyMetadata(dst, fi)
}

func cloneDir(ctx context.Context, src, dst string, tc *treeClone) error {
	entries, err := os.ReadDir(src)
	if err != nil {
		return err
	}
	for _, e := range entries {
		// A tree can hold several large files; stop between them when the
		// caller gives up. (A single copy is not interrupted.)
		if err := ctx.Err(); err != nil {
			return err
		}
		sp, dp := filepath.Join(src, e.Name()), filepath.Join(dst, e.Name())
		fi, err := e.Info()
		if err != nil {
			return err
		}
		switch mode := fi.Mode(); {
		case mode.IsDir():
			if err := os.Mkdir(dp, 0o700); err != nil {
				return err
			}
			if err := cloneDir(ctx, sp, dp, tc); err != nil {
				return err
			}
		case mode.IsRegular():
			m, reason, err := cloneFile(sp, dp)
			if err != nil {
				return err
			}
			if m == MethodSparseCopy {
				tc.copied++
				if tc.reason == nil {
					tc.reason = reason
				}
			} else {
				tc.reflinked++
			}
		case mode&os.ModeSymlink != 0:
			target, err := os.Readlink(sp)
			if err != nil {
				return err
			}
			if err := os.Symlink(target, dp); err != nil {
				return err
			}
		default:
			return fmt.Errorf("%s: cannot clone a file of type %v: %w", sp, mode.Type(), errdefs.ErrNotImplemented)
		}
		if err := copyMetadata(dp, fi); err != nil {
			return err
		}
	}
	return nil
}

// copyMetadata gives dst the mode, owner and modification time of fi.
func copyMetadata(dst string, fi os.FileInfo) error {
	if uid, gid, ok := fileOwner(fi); ok && os.Geteuid() == 0 {
		// Only root can give files away; others keep their own files.
		if err := os.Lchown(dst, uid, gid); err != nil {
			return err
		}
	}
	if fi.Mode()&os.ModeSymlink != 0 {
		// No portable lchmod/lutimes; a symlink's mode is unused anyway.
		return nil
	}
	// After chown, which clears setuid/setgid bits.
	if err := os.Chmod(dst, modeBits(fi.Mode())); err != nil {
		return err
	}
	// The zero access time leaves it as it is.
	return os.Chtimes(dst, time.Time{}, fi.ModTime())
}

func modeBits(m os.FileMode) os.FileMode {
	return m & (os.ModePerm | os.ModeSetuid | os.ModeSetgid | os.ModeSticky)
}

const (
	// copyBuffer is the read size of the sparse copy.
	copyBuffer = 1 << 20
	// zeroBlock is the granularity at which all-zero data is skipped
	// (left as a hole): the common file system block size.
	zeroBlock = 4096
)

// sparseCopy copies src to a new file dst without allocating its holes:
// dst starts as a hole of src's size, and only the data ranges of src (as
// SEEK_DATA/SEEK_HOLE report them, or the whole file where they are not
// supported) are written, minus the 4 KiB blocks that are all zeros.
func sparseCopy(src, dst string) (err error) {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	fi, err := in.Stat()
	if err != nil {
		return err
	}
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	defer func() {
		if cerr := out.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			_ = os.Remove(dst)
		}
	}()
	size := fi.Size()
	if err := out.Truncate(size); err != nil {
		return err
	}
	buf := make([]byte, copyBuffer)
	if err := DataRanges(in, size, func(start, end int64) error {
		return copyRange(in, out, start, end, buf)
	}); err != nil {
		return err
	}
	// A reflink is a journaled metadata operation, but copied data sits in
	// the page cache: flush it before the snapshot is published, or a
	// crash could leave a committed clone with a disk of garbage.
	return out.Sync()
}

// copyRange copies [start, end) of in to the same offsets of out, skipping
// all-zero blocks (out already reads as zeros there).
func copyRange(in, out *os.File, start, end int64, buf []byte) error {
	for off := start; off < end; {
		n := int64(len(buf))
		if end-off < n {
			n = end - off
		}
		chunk := buf[:n]
		if _, err := in.ReadAt(chunk, off); err != nil {
			if errors.Is(err, io.EOF) {
				return fmt.Errorf("%s shrank while it was copied: %w", in.Name(), err)
			}
			return err
		}
		if err := writeNonZero(out, chunk, off); err != nil {
			return err
		}
		off += n
	}
	return nil
}

var zeros [zeroBlock]byte

// writeNonZero writes the runs of chunk that are not all-zero blocks, one
// write per run.
func writeNonZero(out *os.File, chunk []byte, off int64) error {
	runStart := -1
	flush := func(i int) error {
		if runStart < 0 {
			return nil
		}
		_, err := out.WriteAt(chunk[runStart:i], off+int64(runStart))
		runStart = -1
		return err
	}
	for i := 0; i < len(chunk); i += zeroBlock {
		j := min(i+zeroBlock, len(chunk))
		if bytes.Equal(chunk[i:j], zeros[:j-i]) {
			if err := flush(i); err != nil {
				return err
			}
		} else if runStart < 0 {
			runStart = i
		}
	}
	return flush(len(chunk))
}

package imagetree

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"fmt"
	"io"
	"os"
	"path"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/containerd/errdefs"
)

// An initramfs is one or more cpio archives in the "new ASCII" format
// (newc, magic 070701; 070702 adds a checksum), concatenated, optionally
// gzip-compressed as a whole: each entry is a 110-byte header of the
// magic and thirteen 8-digit hexadecimal fields, the NUL-terminated name
// padded to a multiple of four bytes from the header's start, then the
// data padded the same way; the entry TRAILER!!! ends an archive.

const (
	cpioHeaderLen = 110
	maxCpioName   = 4096    // PATH_MAX
	maxCpioLink   = 4096    // a symlink's target
	maxCpioFiles  = 1 << 20 // entries in one initramfs
)

// File types of the header's mode (st_mode).
const (
	sIFMT   = 0o170000
	sIFSOCK = 0o140000
	sIFLNK  = 0o120000
	sIFREG  = 0o100000
	sIFBLK  = 0o060000
	sIFDIR  = 0o040000
	sIFCHR  = 0o020000
	sIFIFO  = 0o010000
)

// cpioHeader is the part of a newc header the extraction uses.
type cpioHeader struct {
	ino, mode, uid, gid, nlink, mtime uint32
	size                              uint32
	name                              string
}

// ExtractInitrd unpacks an initramfs (newc cpio, plain or gzip) into dir,
// an existing empty directory, as the kernel would: regular files,
// directories, symlinks and hard links, with their owners, modes and
// times. Device nodes, FIFOs and sockets are left out. Names are cleaned
// and may not climb out of the tree ("../x" is refused); nothing is
// followed out of it (os.Root).
func ExtractInitrd(ctx context.Context, r io.Reader, dir string, b *Budget) error {
	br := bufio.NewReaderSize(r, 64<<10)
	if magic, err := br.Peek(2); err == nil && magic[0] == 0x1f && magic[1] == 0x8b {
		zr, err := gzip.NewReader(br)
		if err != nil {
			return fmt.Errorf("initramfs: %v: %w", err, errdefs.ErrDataLoss)
		}
		defer zr.Close()
		zr.Multistream(true)
		br = bufio.NewReaderSize(zr, 64<<10)
	}
	root, err := os.OpenRoot(dir)
	if err != nil {
		return err
	}
	defer root.Close()
	x := &cpioExtract{root: root, b: b, links: map[uint32]string{}, dirModes: map[string]cpioHeader{}}
	if err := x.run(ctx, br); err != nil {
		return fmt.Errorf("initramfs: %w", err)
	}
	return x.finishDirs()
}

type cpioExtract struct {
	root     *os.Root
	b        *Budget
	r        *bufio.Reader
	off      int64
	files    int
	links    map[uint32]string     // inode → the first path of a hard-linked file
	dirModes map[string]cpioHeader // set once everything is in them
}

func (x *cpioExtract) read(p []byte) error {
	n, err := io.ReadFull(x.r, p)
	x.off += int64(n)
	if err == io.ErrUnexpectedEOF || (err == io.EOF && len(p) > 0) {
		return fmt.Errorf("truncated at byte %d: %w", x.off, errdefs.ErrDataLoss)
	}
	return err
}

// pad skips to the next multiple of four bytes.
func (x *cpioExtract) pad() error {
	if rem := x.off % 4; rem != 0 {
		var z [4]byte
		return x.read(z[:4-rem])
	}
	return nil
}

func (x *cpioExtract) run(ctx context.Context, r *bufio.Reader) error {
	x.r = r
	for {
		// Between archives: NUL padding, then another archive or the end.
		for {
			c, err := x.r.Peek(1)
			if err == io.EOF {
				return nil
			}
			if err != nil {
				return err
			}
			if c[0] != 0 {
				break
			}
			x.r.Discard(1)
			x.off++
		}
		if err := x.archive(ctx); err != nil {
			return err
		}
	}
}

// archive extracts one cpio archive, up to its trailer.
func (x *cpioExtract) archive(ctx context.Context) error {
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		h, err := x.header()
		if err != nil {
			return err
		}
		if h.name == "TRAILER!!!" {
			return nil
		}
		if x.files++; x.files > maxCpioFiles {
			return fmt.Errorf("more than %d entries: %w", maxCpioFiles, errdefs.ErrInvalidArgument)
		}
		if err := x.entry(h); err != nil {
			return fmt.Errorf("%s: %w", h.name, err)
		}
		if err := x.pad(); err != nil {
			return err
		}
	}
}

func (x *cpioExtract) header() (cpioHeader, error) {
	var raw [cpioHeaderLen]byte
	if err := x.read(raw[:]); err != nil {
		return cpioHeader{}, err
	}
	if m := string(raw[:6]); m != "070701" && m != "070702" {
		return cpioHeader{}, fmt.Errorf("byte %d: not a newc cpio header (magic %q): %w", x.off-cpioHeaderLen, m, errdefs.ErrDataLoss)
	}
	var f [13]uint32
	for i := range f {
		v, err := strconv.ParseUint(string(raw[6+8*i:14+8*i]), 16, 32)
		if err != nil {
			return cpioHeader{}, fmt.Errorf("byte %d: header field %d is not hexadecimal: %w", x.off-cpioHeaderLen, i, errdefs.ErrDataLoss)
		}
		f[i] = uint32(v)
	}
	h := cpioHeader{ino: f[0], mode: f[1], uid: f[2], gid: f[3], nlink: f[4], mtime: f[5], size: f[6]}
	namesize := f[11]
	if namesize == 0 || namesize > maxCpioName {
		return cpioHeader{}, fmt.Errorf("byte %d: name size %d: %w", x.off, namesize, errdefs.ErrDataLoss)
	}
	name := make([]byte, namesize)
	if err := x.read(name); err != nil {
		return cpioHeader{}, err
	}
	if name[namesize-1] != 0 || bytes.IndexByte(name[:namesize-1], 0) >= 0 {
		return cpioHeader{}, fmt.Errorf("byte %d: a name that is not one NUL-terminated string: %w", x.off, errdefs.ErrDataLoss)
	}
	h.name = string(name[:namesize-1])
	return h, x.pad()
}

// cleanName is an entry's path in the tree ("" for the tree itself).
func cleanName(name string) (string, error) {
	n := strings.TrimLeft(name, "/")
	for _, part := range strings.Split(n, "/") {
		if part == ".." {
			return "", fmt.Errorf("the name %q climbs out of the tree: %w", name, errdefs.ErrInvalidArgument)
		}
	}
	n = path.Clean(n)
	if n == "." {
		return "", nil
	}
	return n, nil
}

func (x *cpioExtract) entry(h cpioHeader) error {
	name, err := cleanName(h.name)
	if err != nil {
		return err
	}
	data := io.LimitReader(x.r, int64(h.size))
	defer func() {
		// Whatever was not read (a skipped entry's data) is skipped.
		n, _ := io.Copy(io.Discard, data)
		x.off += n
	}()
	if name == "" {
		if h.mode&sIFMT == sIFDIR {
			x.dirModes["."] = h
		}
		return nil
	}
	if dir := path.Dir(name); dir != "." {
		// The kernel makes missing parents; so does this, to be set by
		// their own entries if they come.
		if err := x.root.MkdirAll(dir, 0o755); err != nil {
			return err
		}
	}
	perm := os.FileMode(h.mode & 0o777)
	switch h.mode & sIFMT {
	case sIFDIR:
		if err := x.root.Mkdir(name, 0o700); err != nil && !os.IsExist(err) {
			return err
		}
		if fi, err := x.root.Lstat(name); err != nil || !fi.IsDir() {
			return fmt.Errorf("a directory where the archive has a non-directory: %w", errdefs.ErrInvalidArgument)
		}
		x.dirModes[name] = h
		return nil
	case sIFLNK:
		if h.size == 0 || h.size > maxCpioLink {
			return fmt.Errorf("a symlink target of %d bytes: %w", h.size, errdefs.ErrDataLoss)
		}
		target := make([]byte, h.size)
		n, err := io.ReadFull(data, target)
		x.off += int64(n)
		if err != nil {
			return fmt.Errorf("truncated symlink: %w", errdefs.ErrDataLoss)
		}
		x.replace(name)
		if err := x.root.Symlink(string(target), name); err != nil {
			return err
		}
		return x.owner(name, h, false)
	case sIFREG:
		if err := x.b.take(int64(h.size)); err != nil {
			return err
		}
		if h.nlink > 1 {
			if first, ok := x.links[h.ino]; ok {
				return x.hardLink(first, name, h, data)
			}
			x.links[h.ino] = name
		}
		x.replace(name)
		if err := x.writeData(name, os.O_CREATE|os.O_EXCL, h, data); err != nil {
			return err
		}
		return x.setFile(name, h, perm)
	case sIFBLK, sIFCHR, sIFIFO, sIFSOCK:
		return nil // means something on the host, not in a tree
	default:
		return fmt.Errorf("unknown file type %o: %w", h.mode&sIFMT, errdefs.ErrDataLoss)
	}
}

// writeData writes an entry's data into name (opened with flags and
// O_WRONLY), all of it or a DataLoss error.
func (x *cpioExtract) writeData(name string, flags int, h cpioHeader, data io.Reader) error {
	f, err := x.root.OpenFile(name, os.O_WRONLY|flags, 0o600)
	if err != nil {
		return err
	}
	n, err := io.Copy(f, data)
	x.off += n
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	if n != int64(h.size) {
		return fmt.Errorf("truncated file: %w", errdefs.ErrDataLoss)
	}
	return nil
}

// hardLink makes name another link to first; newc writes a hard-linked
// file's data with one of its entries only (the last, by convention),
// so data that comes here replaces first's.
func (x *cpioExtract) hardLink(first, name string, h cpioHeader, data io.Reader) error {
	if h.size > 0 {
		if err := x.writeData(first, os.O_TRUNC, h, data); err != nil {
			return err
		}
		if err := x.setFile(first, h, os.FileMode(h.mode&0o777)); err != nil {
			return err
		}
	}
	x.replace(name)
	return x.root.Link(first, name)
}

// replace removes what an earlier entry left at name (a later entry of
// the same name wins, as in the kernel); never a directory.
func (x *cpioExtract) replace(name string) {
	if fi, err := x.root.Lstat(name); err == nil && !fi.IsDir() {
		x.root.Remove(name)
	}
}

func (x *cpioExtract) setFile(name string, h cpioHeader, perm os.FileMode) error {
	if err := x.owner(name, h, true); err != nil {
		return err
	}
	// Setuid, setgid and sticky bits too (after chown, which clears
	// them); the tree is read-only to everyone but the daemon.
	mode := perm | specialBits(h.mode)
	if err := x.root.Chmod(name, mode); err != nil {
		return err
	}
	t := time.Unix(int64(h.mtime), 0)
	return x.root.Chtimes(name, t, t)
}

func specialBits(mode uint32) os.FileMode {
	var m os.FileMode
	if mode&0o4000 != 0 {
		m |= os.ModeSetuid
	}
	if mode&0o2000 != 0 {
		m |= os.ModeSetgid
	}
	if mode&0o1000 != 0 {
		m |= os.ModeSticky
	}
	return m
}

// owner sets an entry's owner; only root can, so an unprivileged run
// (unit tests) keeps its own.
func (x *cpioExtract) owner(name string, h cpioHeader, follow bool) error {
	if os.Geteuid() != 0 {
		return nil
	}
	if follow {
		return x.root.Chown(name, int(h.uid), int(h.gid))
	}
	return x.root.Lchown(name, int(h.uid), int(h.gid))
}

// finishDirs gives directories their owners, modes and times, deepest
// first, once nothing more is written into them.
func (x *cpioExtract) finishDirs() error {
	names := make([]string, 0, len(x.dirModes))
	for n := range x.dirModes {
		names = append(names, n)
	}
	depth := func(n string) int {
		if n == "." {
			return -1
		}
		return strings.Count(n, "/")
	}
	sort.Slice(names, func(i, j int) bool { return depth(names[i]) > depth(names[j]) })
	for _, n := range names {
		h := x.dirModes[n]
		if fi, err := x.root.Lstat(n); err != nil || !fi.IsDir() {
			continue // replaced by a later entry
		}
		if err := x.setFile(n, h, os.FileMode(h.mode&0o777)); err != nil {
			return fmt.Errorf("%s: %w", n, err)
		}
	}
	return nil
}

package guest

import (
	"bytes"
	"fmt"
	"io"
	"io/fs"
	"sort"
	"strings"
)

// The initramfs is a cpio archive in the "new ASCII" (newc) format, the
// one the kernel unpacks (Documentation/driver-api/early-userspace/
// buffer-format.rst): each entry is the magic "070701", thirteen 8-digit
// hexadecimal fields, the NUL-terminated name padded to a multiple of four
// bytes (counting from the start of the header), then the data padded the
// same way. The entry named "TRAILER!!!" ends the archive.

// Mode bits of the cpio header (the st_mode file types).
const (
	cpioDir     = 0o040000
	cpioReg     = 0o100000
	cpioSymlink = 0o120000
	cpioChar    = 0o020000
)

// cpioWriter writes newc entries with inode numbers counting up from 1,
// owner root and a fixed mtime, so the same input gives the same bytes.
type cpioWriter struct {
	w     io.Writer
	n     int64
	ino   uint32
	mtime uint32
	err   error
}

func (c *cpioWriter) write(b []byte) {
	if c.err != nil {
		return
	}
	n, err := c.w.Write(b)
	c.n += int64(n)
	c.err = err
}

func (c *cpioWriter) pad() {
	if r := c.n % 4; r != 0 {
		c.write(make([]byte, 4-r))
	}
}

// entry writes one entry. name is relative to the archive root (no
// leading slash); mode holds the file type and permission bits.
func (c *cpioWriter) entry(name string, mode uint32, data []byte, rdevMajor, rdevMinor uint32) {
	c.ino++
	nlink := uint32(1)
	if mode&0o170000 == cpioDir {
		nlink = 2
	}
	ino := c.ino
	if name == cpioTrailer {
		ino, nlink = 0, 1
	}
	hdr := fmt.Sprintf("070701%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x",
		ino, mode, 0, 0, nlink, c.mtime, len(data), 0, 0, rdevMajor, rdevMinor, len(name)+1, 0)
	c.write([]byte(hdr))
	c.write([]byte(name + "\x00"))
	c.pad()
	c.write(data)
	c.pad()
}

// entryLinks writes the first name of a file with nlink names, with its
// data, and returns its inode number for linkEntry.
func (c *cpioWriter) entryLinks(name string, mode uint32, data []byte, nlink uint32) uint32 {
	c.ino++
	c.header(name, c.ino, mode, nlink, data)
	return c.ino
}

// linkEntry writes another name of inode ino: no data (the kernel links
// it to the name it unpacked first).
func (c *cpioWriter) linkEntry(name string, mode, ino, nlink uint32) {
	c.header(name, ino, mode, nlink, nil)
}

func (c *cpioWriter) header(name string, ino, mode, nlink uint32, data []byte) {
	hdr := fmt.Sprintf("070701%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x",
		ino, mode, 0, 0, nlink, c.mtime, len(data), 0, 0, 0, 0, len(name)+1, 0)
	c.write([]byte(hdr))
	c.write([]byte(name + "\x00"))
	c.pad()
	c.write(data)
	c.pad()
}

const cpioTrailer = "TRAILER!!!"

func (c *cpioWriter) close() error {
	c.entry(cpioTrailer, 0, nil, 0, 0)
	return c.err
}

// cpioMode turns a file's fs.FileMode into cpio's st_mode.
func cpioMode(m fs.FileMode) uint32 {
	perm := uint32(m.Perm())
	if m&fs.ModeSetuid != 0 {
		perm |= 0o4000
	}
	if m&fs.ModeSetgid != 0 {
		perm |= 0o2000
	}
	if m&fs.ModeSticky != 0 {
		perm |= 0o1000
	}
	switch {
	case m.IsDir():
		return cpioDir | perm
	case m&fs.ModeSymlink != 0:
		return cpioSymlink | perm
	case m&fs.ModeCharDevice != 0:
		return cpioChar | perm
	default:
		return cpioReg | perm
	}
}

// cpioName is p without its leading slash.
func cpioName(p string) string { return strings.TrimPrefix(p, "/") }

// AppendFiles is initrd with a second newc archive after it holding
// regular files (path → contents, mode 0644): the kernel unpacks both,
// the later entries replacing the earlier ones, so a variant of a guest
// can change a few files without rebuilding its initramfs.
func AppendFiles(initrd []byte, files map[string]string) ([]byte, error) {
	var buf bytes.Buffer
	buf.Write(initrd)
	for buf.Len()%4 != 0 {
		buf.WriteByte(0)
	}
	names := make([]string, 0, len(files))
	for n := range files {
		names = append(names, n)
	}
	sort.Strings(names)
	c := &cpioWriter{w: &buf, n: int64(buf.Len()), ino: 1 << 20}
	for _, n := range names {
		c.entry(cpioName(n), cpioReg|0o644, []byte(files[n]), 0, 0)
	}
	if err := c.close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

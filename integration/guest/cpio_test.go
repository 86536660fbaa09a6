package guest

import (
	"bytes"
	"io/fs"
	"strconv"
	"testing"
)

// TestHardLinks: hard-linked names share one inode and its link count,
// and only the first name in the archive carries the data (the kernel
// links the later ones to it).
func TestHardLinks(t *testing.T) {
	tr := tree{}
	tr.add(File{Path: "/bin/sh", Mode: 0o755, Data: []byte("busybox")})
	tr.add(File{Path: "/bin/ls", Mode: 0o755, HardLink: "/bin/sh"})
	tr.add(File{Path: "/bin/[", Mode: 0o755, HardLink: "/bin/sh"})
	tr.add(File{Path: "/bin/cat", Mode: fs.ModeSymlink | 0o777, Data: []byte("busybox")})
	var buf bytes.Buffer
	if _, err := tr.write(&buf); err != nil {
		t.Fatal(err)
	}
	type entry struct {
		ino, nlink, size uint64
	}
	got := map[string]entry{}
	var order []string
	b := buf.Bytes()
	for off := 0; off+110 <= len(b); {
		field := func(i int) uint64 {
			v, err := strconv.ParseUint(string(b[off+6+8*i:off+14+8*i]), 16, 32)
			if err != nil {
				t.Fatalf("header at %d: %v", off, err)
			}
			return v
		}
		ino, nlink, size, namesize := field(0), field(4), field(6), field(11)
		name := string(b[off+110 : off+110+int(namesize)-1])
		if name == cpioTrailer {
			break
		}
		got[name] = entry{ino, nlink, size}
		order = append(order, name)
		off = (off + 110 + int(namesize) + 3) &^ 3
		off = (off + int(size) + 3) &^ 3
	}
	sh, ls, br := got["bin/sh"], got["bin/ls"], got["bin/["]
	if sh.ino != ls.ino || sh.ino != br.ino || sh.nlink != 3 || ls.nlink != 3 || br.nlink != 3 {
		t.Errorf("links: sh %+v ls %+v [ %+v, want one inode with 3 links", sh, ls, br)
	}
	// "/bin/[" sorts first: it carries the data, the others none.
	if br.size != 7 || sh.size != 0 || ls.size != 0 {
		t.Errorf("data sizes: [ %d, sh %d, ls %d; want 7 on the first name only (order %v)", br.size, sh.size, ls.size, order)
	}
	if c := got["bin/cat"]; c.nlink != 1 || c.ino == sh.ino {
		t.Errorf("symlink entry %+v", c)
	}
	bad := tree{}
	bad.add(File{Path: "/bin/ls", HardLink: "/bin/missing"})
	if _, err := bad.write(&bytes.Buffer{}); err == nil {
		t.Error("a hard link to a missing file was written")
	}
}

//go:build unix

package snapshotter

import (
	"os"
	"syscall"
)

// fileOwner returns the owner of the file fi describes.
func fileOwner(fi os.FileInfo) (uid, gid int, ok bool) {
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return 0, 0, false
	}
	return int(st.Uid), int(st.Gid), true
}

// allocation returns the bytes allocated to the file (st_blocks is in
// 512-byte units on every unix, whatever the file system block size) and
// an identity for counting hard links once.
func allocation(fi os.FileInfo) (bytes int64, id fileID, ok bool) {
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return 0, fileID{}, false
	}
	return int64(st.Blocks) * 512, fileID{dev: uint64(st.Dev), ino: uint64(st.Ino)}, true
}

package vmimage

import (
	"os"

	"golang.org/x/sys/unix"
)

// startWriteback asks the kernel to begin writing the range's dirty pages
// to the disk now and returns without waiting for them. An error is only
// a missed hint: the unpacker's final Sync reports a failed write.
func startWriteback(f *os.File, off, n int64) {
	unix.SyncFileRange(int(f.Fd()), off, n, unix.SYNC_FILE_RANGE_WRITE)
}

package agent

import (
	"golang.org/x/sys/unix"

	api "github.com/macvz/macvz/runtime/agentapi"
)

func fsStats(path string) *api.FilesystemStats {
	fs := &api.FilesystemStats{Path: path}
	var st unix.Statfs_t
	if err := unix.Statfs(path, &st); err != nil {
		fs.Error = err.Error()
		return fs
	}
	bs := uint64(st.Bsize)
	fs.CapacityBytes = st.Blocks * bs
	fs.AvailableBytes = st.Bavail * bs
	fs.UsedBytes = (st.Blocks - st.Bfree) * bs
	fs.Inodes = st.Files
	fs.InodesUsed = st.Files - st.Ffree
	return fs
}

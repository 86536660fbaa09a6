package cri

import (
	"context"
	"path/filepath"
	"time"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// ImageFsInfo reports the bytes and inodes that image content and VM disks
// (bases and sandbox clones) really take on the file system under root.
//
// The CRI answer carries usage only: kubelet learns the file system's
// capacity and free space by asking its cAdvisor about the mountpoint
// (cri_stats_provider.go, getFsInfo: GetDirFsInfo stats the path and
// looks its device up among the mounts cAdvisor read when kubelet
// started, of the file system types it has a plugin for). Without them
// its image GC fails ("invalid capacity 0 on image filesystem", event
// InvalidDiskCapacity) and its eviction manager has no imagefs signal. A
// kubelet on the host finds root itself; the node VM mounts a file
// system at the same path whose statfs is the host's (nodevm.Config
// ImageFs), so kubelet there sees the host's capacity too.
func (s *Service) ImageFsInfo(ctx context.Context, _ *runtimeapi.ImageFsInfoRequest) (*runtimeapi.ImageFsInfoResponse, error) {
	bytes, inodes, err := s.images.Usage(ctx)
	if err != nil {
		return nil, err
	}
	return &runtimeapi.ImageFsInfoResponse{
		ImageFilesystems: []*runtimeapi.FilesystemUsage{{
			Timestamp:  time.Now().UnixNano(),
			FsId:       &runtimeapi.FilesystemIdentifier{Mountpoint: s.imageFsMountpoint()},
			UsedBytes:  &runtimeapi.UInt64Value{Value: uint64(bytes)},
			InodesUsed: &runtimeapi.UInt64Value{Value: uint64(inodes)},
		}},
	}, nil
}

// imageFsMountpoint is the path that names the image filesystem to
// kubelet: the daemon's root, where the content store and the
// snapshotter's disks are.
func (s *Service) imageFsMountpoint() string { return s.cfg.Root }

// nodeImageFsDir is the directory the node VM is given to stat the image
// filesystem through: an empty one of its own under root (so on the same
// file system), rather than root itself, whose images and VM disks the
// node VM has no business reading.
func nodeImageFsDir(root string) string { return filepath.Join(root, "node-imagefs") }

package cri

import (
	"context"
	"time"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// ImageFsInfo reports the bytes and inodes that image content and VM disks
// (bases and sandbox clones) really take on the file system under root.
func (s *Service) ImageFsInfo(ctx context.Context, _ *runtimeapi.ImageFsInfoRequest) (*runtimeapi.ImageFsInfoResponse, error) {
	bytes, inodes, err := s.images.Usage(ctx)
	if err != nil {
		return nil, err
	}
	return &runtimeapi.ImageFsInfoResponse{
		ImageFilesystems: []*runtimeapi.FilesystemUsage{{
			Timestamp:  time.Now().UnixNano(),
			FsId:       &runtimeapi.FilesystemIdentifier{Mountpoint: s.cfg.Root},
			UsedBytes:  &runtimeapi.UInt64Value{Value: uint64(bytes)},
			InodesUsed: &runtimeapi.UInt64Value{Value: uint64(inodes)},
		}},
	}, nil
}

package cri

import (
	"google.golang.org/grpc"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// streamPage bounds one StreamImages message, so a node with many images
// never hits the gRPC message size limit that ListImages can hit.
const streamPage = 100

// StreamImages is ListImages in pages.
func (s *Service) StreamImages(r *runtimeapi.StreamImagesRequest, stream grpc.ServerStreamingServer[runtimeapi.StreamImagesResponse]) error {
	resp, err := s.ListImages(stream.Context(), &runtimeapi.ListImagesRequest{Filter: r.GetFilter()})
	if err != nil {
		return err
	}
	imgs := resp.GetImages()
	for len(imgs) > 0 {
		n := min(len(imgs), streamPage)
		if err := stream.Send(&runtimeapi.StreamImagesResponse{Images: imgs[:n]}); err != nil {
			return err
		}
		imgs = imgs[n:]
	}
	return nil
}

package cri

import (
	"context"
	"encoding/json"

	"github.com/containerd/errdefs"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/macvz/macvz/vmimage/imagestore"
)

// ImageStatus describes one image. An unknown image is not an error: CRI
// answers with no image, and kubelet then pulls it.
func (s *Service) ImageStatus(ctx context.Context, r *runtimeapi.ImageStatusRequest) (*runtimeapi.ImageStatusResponse, error) {
	recs, err := s.images.Resolve(ctx, r.GetImage().GetImage())
	if errdefs.IsNotFound(err) {
		return &runtimeapi.ImageStatusResponse{}, nil
	}
	if err != nil {
		return nil, err
	}
	img, err := s.criImage(ctx, recs)
	if err != nil {
		return nil, err
	}
	resp := &runtimeapi.ImageStatusResponse{Image: img}
	if r.GetVerbose() {
		info, err := s.imageInfo(ctx, recs[0])
		if err != nil {
			return nil, err
		}
		resp.Info = map[string]string{"info": info}
	}
	return resp, nil
}

// imageVerboseInfo is what `crictl inspecti` shows under "info".
type imageVerboseInfo struct {
	ID        string          `json:"id"`
	Kind      string          `json:"kind"`
	Bootable  bool            `json:"bootable"`
	Target    any             `json:"target"`
	Manifest  any             `json:"manifest"`
	ImageSpec json.RawMessage `json:"imageSpec,omitempty"`
	VMConfig  json.RawMessage `json:"vmConfig,omitempty"`
	Base      string          `json:"base,omitempty"`
}

func (s *Service) imageInfo(ctx context.Context, img imagestore.Image) (string, error) {
	cfg, err := s.images.Config(ctx, img)
	if err != nil {
		return "", err
	}
	kind := string(img.Kind)
	if kind == "" {
		kind = "oci"
	}
	v := imageVerboseInfo{ID: img.ID(), Kind: kind, Target: img.Target, Manifest: img.Manifest}
	if img.Kind == "" {
		v.ImageSpec = cfg
	} else {
		v.VMConfig = cfg
		v.Base, v.Bootable = s.images.Base(ctx, img)
	}
	b, err := json.Marshal(v)
	return string(b), err
}

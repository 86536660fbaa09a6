package cri

import (
	"context"
	"slices"
	"testing"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// TestRemoveImage: RemoveImage by ID removes the image with its names
// from the store, after which ImageStatus answers with no image;
// removing it again or an absent image is fine. The store's InUse
// callback sees a pod's image as in use until the pod is removed.
func TestRemoveImage(t *testing.T) {
	f := newFake(t)
	ctx := context.Background()
	img, _ := f.images.VMImage(ctx, guestRef)
	id := img.Image.ID()

	r, err := f.ImageStatus(ctx, &runtimeapi.ImageStatusRequest{Image: &runtimeapi.ImageSpec{Image: guestRef}})
	if err != nil || r.GetImage().GetId() != id || !slices.Equal(r.GetImage().GetRepoTags(), []string{guestRef}) || r.GetImage().GetUid().GetValue() != 33 {
		t.Fatalf("ImageStatus before the removal: %v, %v", r, err)
	}
	if f.imageOpts.InUse(id) {
		t.Error("an image no pod uses is in use")
	}
	sbID := f.runPod(t, hostPod(t, "web"), "guest")
	if !f.imageOpts.InUse(id) {
		t.Error("the image of a running pod is not in use")
	}
	if _, err := f.RemovePodSandbox(ctx, &runtimeapi.RemovePodSandboxRequest{PodSandboxId: sbID}); err != nil {
		t.Fatal(err)
	}

	for i, ref := range []string{id, id, guestRef, "example.com/absent:1"} {
		if _, err := f.RemoveImage(ctx, &runtimeapi.RemoveImageRequest{Image: &runtimeapi.ImageSpec{Image: ref}}); err != nil {
			t.Errorf("RemoveImage #%d (%s): %v", i+1, ref, err)
		}
	}
	if !slices.Equal(f.images.removed, []string{guestRef}) {
		t.Errorf("removed from the store: %v", f.images.removed)
	}
	r, err = f.ImageStatus(ctx, &runtimeapi.ImageStatusRequest{Image: &runtimeapi.ImageSpec{Image: guestRef}})
	if err != nil || r.GetImage() != nil {
		t.Errorf("ImageStatus after the removal: %v, %v", r, err)
	}
	l, err := f.ListImages(ctx, &runtimeapi.ListImagesRequest{})
	if err != nil || len(l.GetImages()) != 0 {
		t.Errorf("ListImages after the removal: %v, %v", l, err)
	}
}

package cri

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/proto"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// TestImageVolumes: a mount naming an image gets the image's tree (or
// its sub path) as its host path and the image's ID as its image_ref,
// which ContainerStatus reports; a writable image volume, an absent
// image or sub path and a sub path without an image are refused and
// record nothing; the image cannot be removed while mounted, and its
// tree is released with its last user.
func TestImageVolumes(t *testing.T) {
	f := newFake(t)
	ctx := context.Background()
	img, _ := f.images.VMImage(ctx, guestRef)
	tree := img.BaseDir
	if err := os.MkdirAll(filepath.Join(tree, "etc"), 0o755); err != nil {
		t.Fatal(err)
	}
	pod := hostPod(t, "web")
	sbID := f.runPod(t, pod, "")
	vol := func(ro bool, sub string) *runtimeapi.Mount {
		return &runtimeapi.Mount{ContainerPath: "/mnt/tools", Readonly: ro, ImageSubPath: sub, Image: &runtimeapi.ImageSpec{Image: guestRef}}
	}
	md := &runtimeapi.ContainerMetadata{Name: "refused"}
	for _, tc := range []struct {
		name  string
		mount *runtimeapi.Mount
		want  codes.Code
	}{
		{"writable", vol(false, ""), codes.InvalidArgument},
		{"absent sub path", vol(true, "not-existing"), codes.NotFound},
		{"absolute sub path", vol(true, "/etc"), codes.InvalidArgument},
		{"absent image", &runtimeapi.Mount{ContainerPath: "/mnt/x", Readonly: true, Image: &runtimeapi.ImageSpec{Image: "example.com/absent:1"}}, codes.NotFound},
		{"sub path without an image", &runtimeapi.Mount{ContainerPath: "/mnt/x", HostPath: t.TempDir(), ImageSubPath: "etc"}, codes.InvalidArgument},
		{"image and host path", &runtimeapi.Mount{ContainerPath: "/mnt/x", HostPath: t.TempDir(), Readonly: true, Image: &runtimeapi.ImageSpec{Image: guestRef}}, codes.InvalidArgument},
	} {
		cfg := &runtimeapi.ContainerConfig{Metadata: md, Image: &runtimeapi.ImageSpec{Image: guestRef}, Mounts: []*runtimeapi.Mount{tc.mount}}
		_, err := f.CreateContainer(ctx, &runtimeapi.CreateContainerRequest{PodSandboxId: sbID, Config: cfg, SandboxConfig: pod})
		if got := grpcCode(err); got != tc.want {
			t.Errorf("%s: code %v (%v), want %v", tc.name, got, err, tc.want)
		}
	}
	if cs, err := f.st.Containers(nil); err != nil || len(cs) != 0 {
		t.Fatalf("containers after the refusals: %v, %v", cs, err)
	}

	id := f.createCtr(t, sbID, pod, &runtimeapi.ContainerConfig{Metadata: &runtimeapi.ContainerMetadata{Name: "app"},
		Mounts: []*runtimeapi.Mount{vol(true, ""), {ContainerPath: "/mnt/etc", Readonly: true, ImageSubPath: "etc", Image: &runtimeapi.ImageSpec{Image: guestRef}}}})
	c, err := f.st.Container(id)
	if err != nil || !slices.Equal(c.VolumeImages, []string{img.Image.ID()}) {
		t.Fatalf("record: %+v %v", c.VolumeImages, err)
	}
	var cfg runtimeapi.ContainerConfig
	proto.Unmarshal(c.Config, &cfg)
	if m := cfg.GetMounts(); m[0].GetHostPath() != tree || m[1].GetHostPath() != filepath.Join(tree, "etc") {
		t.Errorf("host paths %q %q, want the tree %q and its etc", m[0].GetHostPath(), m[1].GetHostPath(), tree)
	}
	st, err := f.ContainerStatus(ctx, &runtimeapi.ContainerStatusRequest{ContainerId: id})
	if err != nil {
		t.Fatal(err)
	}
	if ms := st.GetStatus().GetMounts(); len(ms) != 2 || ms[0].GetImage().GetImageRef() != img.Image.ID() || ms[0].GetContainerPath() != "/mnt/tools" {
		t.Errorf("status mounts %v, want image_ref %s", ms, img.Image.ID())
	}

	// The image store refuses to remove an image in use: imageInUse is
	// its InUse.
	if !f.imageVolumeInUse(img.Image.ID()) || !f.imageInUse(img.Image.ID()) {
		t.Error("the image is not in use as a volume")
	}
	if _, err := f.RemoveContainer(ctx, &runtimeapi.RemoveContainerRequest{ContainerId: id}); err != nil {
		t.Fatal(err)
	}
	if f.imageVolumeInUse(img.Image.ID()) || !slices.Contains(f.images.treesReleased, img.Image.ID()) {
		t.Errorf("after its last user: in use %v, released %v", f.imageVolumeInUse(img.Image.ID()), f.images.treesReleased)
	}
}

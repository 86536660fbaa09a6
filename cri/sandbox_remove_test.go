package cri

import (
	"context"
	"os"
	"slices"
	"testing"

	"github.com/containerd/errdefs"
	"google.golang.org/grpc/codes"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// TestRemovePodSandbox: a running pod is stopped first (the shim's VM
// stopped, the shim shut down and killed), then its containers' and its
// own records, its state directory and share go; its image is no longer
// in use. Removing it again, or an unknown pod, is fine.
func TestRemovePodSandbox(t *testing.T) {
	f := newFake(t)
	ctx := context.Background()
	sbID, id := f.startedCtr(t, "web")
	sh := f.shimOf(t, sbID)
	dir := f.ctl.Dir(sbID)
	img, _ := f.images.VMImage(ctx, guestRef)
	if !f.imageOpts.InUse(img.Image.ID()) {
		t.Error("the image of a running pod is not in use")
	}
	for i := range 2 {
		if _, err := f.RemovePodSandbox(ctx, &runtimeapi.RemovePodSandboxRequest{PodSandboxId: sbID}); err != nil {
			t.Fatalf("RemovePodSandbox #%d: %v", i+1, err)
		}
	}
	if _, err := f.RemovePodSandbox(ctx, &runtimeapi.RemovePodSandboxRequest{PodSandboxId: "nope"}); err != nil {
		t.Errorf("RemovePodSandbox of an unknown pod: %v", err)
	}
	if n := sh.Calls(); n.Stops != 1 || n.Shutdowns != 1 {
		t.Errorf("shim calls: %+v, want one Stop and one Shutdown", n)
	}
	if f.shims.Running(dir) != nil || !slices.Contains(f.shims.Killed(), dir) {
		t.Errorf("shim still running, or not killed (killed: %v)", f.shims.Killed())
	}
	if _, err := f.st.Sandbox(sbID); !errdefs.IsNotFound(err) {
		t.Errorf("sandbox record: %v", err)
	}
	if _, err := f.st.Container(id); !errdefs.IsNotFound(err) {
		t.Errorf("container record: %v", err)
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Errorf("state directory: %v", err)
	}
	if ms := mountsBelow(t, f.cfg.State); len(ms) != 0 {
		t.Errorf("mounts left: %v", ms)
	}
	if _, err := f.PodSandboxStatus(ctx, &runtimeapi.PodSandboxStatusRequest{PodSandboxId: sbID}); grpcCode(err) != codes.NotFound {
		t.Errorf("PodSandboxStatus after the removal: %v", err)
	}
	if f.imageOpts.InUse(img.Image.ID()) {
		t.Error("the image is still in use")
	}
	f.noSandboxLeft(t, "after RemovePodSandbox")
}

// TestRemoveStoppedPodSandbox: a stopped pod is removed without a second
// stop of its VM.
func TestRemoveStoppedPodSandbox(t *testing.T) {
	f := newFake(t)
	ctx := context.Background()
	sbID, _ := f.startedCtr(t, "web")
	sh := f.shimOf(t, sbID)
	if _, err := f.StopPodSandbox(ctx, &runtimeapi.StopPodSandboxRequest{PodSandboxId: sbID}); err != nil {
		t.Fatal(err)
	}
	if _, err := f.RemovePodSandbox(ctx, &runtimeapi.RemovePodSandboxRequest{PodSandboxId: sbID}); err != nil {
		t.Fatal(err)
	}
	if n := sh.Calls(); n.Stops != 1 {
		t.Errorf("shim calls: %+v", n)
	}
	f.noSandboxLeft(t, "after stop and remove")
	if cs, _ := f.st.Containers(nil); len(cs) != 0 {
		t.Errorf("containers left: %v", cs)
	}
}

package cri

import (
	"context"
	"syscall"
	"testing"

	"github.com/containerd/errdefs"
	"google.golang.org/grpc/codes"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// TestRemoveRunningContainer: a running container is killed, the shim
// forgets its process, and its record goes; removing it again, or an
// unknown container, is fine. The pod and its VM go on.
func TestRemoveRunningContainer(t *testing.T) {
	f := newFake(t)
	ctx := context.Background()
	sbID, id := f.startedCtr(t, "web")
	for i := range 2 {
		if _, err := f.RemoveContainer(ctx, &runtimeapi.RemoveContainerRequest{ContainerId: id}); err != nil {
			t.Fatalf("RemoveContainer #%d: %v", i+1, err)
		}
	}
	if _, err := f.RemoveContainer(ctx, &runtimeapi.RemoveContainerRequest{ContainerId: "nope"}); err != nil {
		t.Errorf("RemoveContainer of an unknown container: %v", err)
	}
	if k := f.shims.Kills(); len(k) != 1 || k[0].GetContainerId() != id || k[0].GetSignal() != uint32(syscall.SIGKILL) {
		t.Errorf("kills %v, want one SIGKILL of %s", k, id)
	}
	sh := f.shimOf(t, sbID)
	if sh == nil {
		t.Fatal("the pod's shim is gone")
	}
	if rm := sh.Removed(); len(rm) != 1 || rm[0].GetContainerId() != id {
		t.Errorf("RemoveProcess calls %v, want one for %s", rm, id)
	}
	if _, err := f.st.Container(id); !errdefs.IsNotFound(err) {
		t.Errorf("record after the removal: %v", err)
	}
	if _, err := f.ContainerStatus(ctx, &runtimeapi.ContainerStatusRequest{ContainerId: id}); grpcCode(err) != codes.NotFound {
		t.Errorf("ContainerStatus after the removal: %v", err)
	}
	if sb, _ := f.st.Sandbox(sbID); !sb.VMStarted || sh.Calls().Stops != 0 {
		t.Errorf("the pod after a container removal: %+v, %+v", sb, sh.Calls())
	}
}

// TestRemoveCreatedContainer: a container that never ran goes without a
// signal, and a pod without a VM is not asked for one.
func TestRemoveCreatedContainer(t *testing.T) {
	f := newFake(t)
	ctx := context.Background()
	pod := hostPod(t, "web")
	sbID := f.runPod(t, pod, "")
	id := f.createCtr(t, sbID, pod, &runtimeapi.ContainerConfig{Metadata: &runtimeapi.ContainerMetadata{Name: "app"}})
	if _, err := f.RemoveContainer(ctx, &runtimeapi.RemoveContainerRequest{ContainerId: id}); err != nil {
		t.Fatal(err)
	}
	if _, err := f.st.Container(id); !errdefs.IsNotFound(err) {
		t.Errorf("record after the removal: %v", err)
	}
	if len(f.shims.Spawned())+len(f.shims.Signals())+len(f.shims.Kills()) != 0 {
		t.Errorf("spawns %d signals %v kills %v", len(f.shims.Spawned()), f.shims.Signals(), f.shims.Kills())
	}
	if sb, err := f.st.Sandbox(sbID); err != nil || sb.VMStarted {
		t.Errorf("the pod: %+v, %v", sb, err)
	}
}

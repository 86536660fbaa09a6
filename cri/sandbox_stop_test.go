package cri

import (
	"context"
	"slices"
	"testing"

	"google.golang.org/grpc/codes"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/macvz/macvz/runtime/store"
)

// TestStopPodSandbox: the VM is stopped and its shim shut down and
// killed, the share unmounted, the pod NotReady and its running
// container Exited; stopping it again, or an unknown pod, is fine and
// asks nothing more of the shim. The records stay until removal.
func TestStopPodSandbox(t *testing.T) {
	f := newFake(t)
	ctx := context.Background()
	sbID, id := f.startedCtr(t, "web")
	sh := f.shimOf(t, sbID)
	dir := f.ctl.Dir(sbID)
	if len(mountsBelow(t, dir)) == 0 {
		t.Fatal("the running pod has no share mounted")
	}
	for i := range 2 {
		if _, err := f.StopPodSandbox(ctx, &runtimeapi.StopPodSandboxRequest{PodSandboxId: sbID}); err != nil {
			t.Fatalf("StopPodSandbox #%d: %v", i+1, err)
		}
	}
	if _, err := f.StopPodSandbox(ctx, &runtimeapi.StopPodSandboxRequest{PodSandboxId: "nope"}); err != nil {
		t.Errorf("StopPodSandbox of an unknown pod: %v", err)
	}
	if n := sh.Calls(); n.Stops != 1 || n.Shutdowns != 1 {
		t.Errorf("shim calls: %+v, want one Stop and one Shutdown", n)
	}
	if f.shims.Running(dir) != nil || !slices.Contains(f.shims.Killed(), dir) {
		t.Errorf("shim still running, or not killed (killed: %v)", f.shims.Killed())
	}
	if ms := mountsBelow(t, dir); len(ms) != 0 {
		t.Errorf("mounts left: %v", ms)
	}
	sb, err := f.st.Sandbox(sbID)
	if err != nil || sb.State != store.SandboxNotReady || sb.VMStarted {
		t.Errorf("record after the stop: %+v, %v", sb, err)
	}
	ps, err := f.PodSandboxStatus(ctx, &runtimeapi.PodSandboxStatusRequest{PodSandboxId: sbID})
	if err != nil || ps.GetStatus().GetState() != runtimeapi.PodSandboxState_SANDBOX_NOTREADY {
		t.Errorf("PodSandboxStatus after the stop: %v, %v", ps, err)
	}
	if st := f.ctrStatus(t, id); st.GetState() != runtimeapi.ContainerState_CONTAINER_EXITED || st.GetExitCode() != 255 {
		t.Errorf("container after the stop: %v", st)
	}
	// No container is created in a stopped pod.
	_, err = f.CreateContainer(ctx, &runtimeapi.CreateContainerRequest{PodSandboxId: sbID, Config: &runtimeapi.ContainerConfig{
		Metadata: &runtimeapi.ContainerMetadata{Name: "late"}, Image: &runtimeapi.ImageSpec{Image: guestRef},
	}})
	if grpcCode(err) != codes.FailedPrecondition {
		t.Errorf("CreateContainer in a stopped pod: %v, want FailedPrecondition", err)
	}
	if cs, _ := f.st.Containers(nil); len(cs) != 1 {
		t.Errorf("containers: %d, want the one created before the stop", len(cs))
	}
}

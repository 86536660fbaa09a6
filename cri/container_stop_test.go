package cri

import (
	"context"
	"strings"
	"syscall"
	"testing"

	"google.golang.org/grpc/codes"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/macvz/macvz/runtime/store"
)

// TestStopContainer: SIGTERM to the process group, and the exit the shim
// saw makes the container Exited; stopping it again, or an unknown
// container, is fine and signals nothing.
func TestStopContainer(t *testing.T) {
	f := newFake(t)
	ctx := context.Background()
	sbID, id := f.startedCtr(t, "web")
	for i := range 2 {
		if _, err := f.StopContainer(ctx, &runtimeapi.StopContainerRequest{ContainerId: id, Timeout: 5}); err != nil {
			t.Fatalf("StopContainer #%d: %v", i+1, err)
		}
	}
	if _, err := f.StopContainer(ctx, &runtimeapi.StopContainerRequest{ContainerId: "nope", Timeout: 5}); err != nil {
		t.Errorf("StopContainer of an unknown container: %v", err)
	}
	sigs := f.shims.Signals()
	if len(sigs) != 1 || sigs[0].GetId().GetContainerId() != id || sigs[0].GetSignal() != uint32(syscall.SIGTERM) || !sigs[0].GetGroup() {
		t.Errorf("signals %v, want one SIGTERM to the group of %s", sigs, id)
	}
	if k := f.shims.Kills(); len(k) != 0 {
		t.Errorf("a stopping process was killed: %v", k)
	}
	st := f.ctrStatus(t, id)
	if st.GetState() != runtimeapi.ContainerState_CONTAINER_EXITED || st.GetExitCode() != 128+int32(syscall.SIGTERM) || st.GetFinishedAt() == 0 {
		t.Errorf("after the stop: %v", st)
	}
	// The pod and its VM go on.
	if sb, _ := f.st.Sandbox(sbID); !sb.VMStarted || f.shimOf(t, sbID) == nil {
		t.Errorf("sandbox after a container stop: %+v", sb)
	}
}

// TestStopContainerKillsAfterTimeout: a process that outlives its grace
// period gets SIGKILL, all its processes.
func TestStopContainerKillsAfterTimeout(t *testing.T) {
	f := newFake(t)
	_, id := f.startedCtr(t, "web")
	f.shims.IgnoreTerm()
	if _, err := f.StopContainer(context.Background(), &runtimeapi.StopContainerRequest{ContainerId: id, Timeout: 1}); err != nil {
		t.Fatal(err)
	}
	if sigs := f.shims.Signals(); len(sigs) != 1 || sigs[0].GetSignal() != uint32(syscall.SIGTERM) {
		t.Errorf("signals: %v", sigs)
	}
	if k := f.shims.Kills(); len(k) != 1 || k[0].GetContainerId() != id || k[0].GetSignal() != uint32(syscall.SIGKILL) {
		t.Errorf("kills %v, want one SIGKILL of %s", k, id)
	}
	if st := f.ctrStatus(t, id); st.GetState() != runtimeapi.ContainerState_CONTAINER_EXITED || st.GetExitCode() != 128+int32(syscall.SIGKILL) {
		t.Errorf("after the kill: %v", st)
	}
}

// TestStopCreatedContainer: a container stopped before it started is
// Exited (Completed) and cannot start any more; nothing is signalled.
func TestStopCreatedContainer(t *testing.T) {
	f := newFake(t)
	ctx := context.Background()
	pod := hostPod(t, "web")
	sbID := f.runPod(t, pod, "guest")
	id := f.createCtr(t, sbID, pod, &runtimeapi.ContainerConfig{Metadata: &runtimeapi.ContainerMetadata{Name: "app"}})
	if _, err := f.StopContainer(ctx, &runtimeapi.StopContainerRequest{ContainerId: id, Timeout: 5}); err != nil {
		t.Fatal(err)
	}
	if st := f.ctrStatus(t, id); st.GetState() != runtimeapi.ContainerState_CONTAINER_EXITED || st.GetReason() != "Completed" || st.GetExitCode() != 0 {
		t.Errorf("after the stop: %v", st)
	}
	if len(f.shims.Signals())+len(f.shims.Kills()) != 0 {
		t.Errorf("signals %v kills %v", f.shims.Signals(), f.shims.Kills())
	}
	if _, err := f.StartContainer(ctx, &runtimeapi.StartContainerRequest{ContainerId: id}); grpcCode(err) != codes.FailedPrecondition {
		t.Errorf("start after the stop: %v", err)
	}
	if reqs, _ := f.shimOf(t, sbID).Started(); len(reqs) != 0 {
		t.Errorf("processes started: %v", reqs)
	}
}

// TestStopVMContainer: a container of a VM image without a process is
// the VM itself: it runs once the VM does, without a process, and
// stopping it shuts the VM down and leaves the pod NotReady.
func TestStopVMContainer(t *testing.T) {
	f := newFake(t)
	ctx := context.Background()
	const vmRef = "example.com/vm:1"
	f.images.addOther(vmRef, nil)
	pod := hostPod(t, "web")
	sbID := f.runPod(t, pod, "")
	id := f.createCtr(t, sbID, pod, &runtimeapi.ContainerConfig{Metadata: &runtimeapi.ContainerMetadata{Name: "vm"}, Image: &runtimeapi.ImageSpec{Image: vmRef}})
	if _, err := f.StartContainer(ctx, &runtimeapi.StartContainerRequest{ContainerId: id}); err != nil {
		t.Fatal(err)
	}
	sh := f.shimOf(t, sbID)
	if sh == nil {
		t.Fatal("the VM container's start booted no VM")
	}
	if reqs, _ := sh.Started(); len(reqs) != 0 {
		t.Errorf("a VM container started processes: %v", reqs)
	}
	if st := f.ctrStatus(t, id); st.GetState() != runtimeapi.ContainerState_CONTAINER_RUNNING {
		t.Errorf("VM container after its start: %v", st)
	}
	if _, err := f.StopContainer(ctx, &runtimeapi.StopContainerRequest{ContainerId: id, Timeout: 3}); err != nil {
		t.Fatal(err)
	}
	if n := sh.Calls(); n.Stops != 1 || n.Shutdowns != 1 || f.shimOf(t, sbID) != nil {
		t.Errorf("shim after the VM container's stop: %+v", n)
	}
	if len(f.shims.Signals())+len(f.shims.Kills()) != 0 {
		t.Errorf("signals %v kills %v", f.shims.Signals(), f.shims.Kills())
	}
	if st := f.ctrStatus(t, id); st.GetState() != runtimeapi.ContainerState_CONTAINER_EXITED || st.GetExitCode() != 0 || st.GetReason() != "Completed" {
		t.Errorf("VM container after its stop: %v", st)
	}
	if sb, _ := f.st.Sandbox(sbID); sb.State != store.SandboxNotReady || sb.VMStarted || !strings.Contains(sb.Reason, "its VM container") {
		t.Errorf("pod after its VM container's stop: %+v", sb)
	}
}

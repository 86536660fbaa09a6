package cri

import (
	"context"
	"encoding/json"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/macvz/macvz/runtime/shimapi"
)

// TestContainerStatus follows a container from Created to Running to the
// exit its shim saw; an unknown container is NotFound.
func TestContainerStatus(t *testing.T) {
	f := newFake(t)
	ctx := context.Background()
	pod := hostPod(t, "web")
	sbID := f.runPod(t, pod, "guest")
	id := f.createCtr(t, sbID, pod, &runtimeapi.ContainerConfig{
		Metadata: &runtimeapi.ContainerMetadata{Name: "app", Attempt: 2},
		Labels:   map[string]string{"tier": "front"},
	})
	img, _ := f.images.VMImage(ctx, guestRef)
	st := f.ctrStatus(t, id)
	if st.GetId() != id || st.GetState() != runtimeapi.ContainerState_CONTAINER_CREATED || st.GetMetadata().GetName() != "app" ||
		st.GetMetadata().GetAttempt() != 2 || st.GetLabels()["tier"] != "front" || st.GetImage().GetImage() != guestRef ||
		st.GetImageRef() != img.Image.ID() || st.GetCreatedAt() == 0 || st.GetStartedAt() != 0 {
		t.Errorf("created: %v", st)
	}

	if _, err := f.StartContainer(ctx, &runtimeapi.StartContainerRequest{ContainerId: id}); err != nil {
		t.Fatal(err)
	}
	r, err := f.ContainerStatus(ctx, &runtimeapi.ContainerStatusRequest{ContainerId: id, Verbose: true})
	if err != nil {
		t.Fatal(err)
	}
	if st := r.GetStatus(); st.GetState() != runtimeapi.ContainerState_CONTAINER_RUNNING || st.GetStartedAt() < st.GetCreatedAt() || st.GetFinishedAt() != 0 {
		t.Errorf("running: %v", st)
	}
	var info struct {
		SandboxID string `json:"sandboxId"`
		IsVM      bool   `json:"isVM"`
	}
	if err := json.Unmarshal([]byte(r.GetInfo()["info"]), &info); err != nil || info.SandboxID != sbID || info.IsVM {
		t.Errorf("verbose info %q: %+v, %v", r.GetInfo()["info"], info, err)
	}

	// The process exits; the shim reports it.
	finished := time.Now().Add(time.Second).UnixNano()
	f.shimOf(t, sbID).SetExit(id, &shimapi.ProcessExit{ExitCode: 3, Reason: "Error", FinishedUnixNano: finished})
	st = f.ctrStatus(t, id)
	if st.GetState() != runtimeapi.ContainerState_CONTAINER_EXITED || st.GetExitCode() != 3 || st.GetReason() != "Error" || st.GetFinishedAt() != finished {
		t.Errorf("exited: %v", st)
	}

	if _, err := f.ContainerStatus(ctx, &runtimeapi.ContainerStatusRequest{ContainerId: "nope"}); grpcCode(err) != codes.NotFound {
		t.Errorf("unknown container: %v", err)
	}
}

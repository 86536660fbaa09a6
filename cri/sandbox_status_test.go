package cri

import (
	"context"
	"encoding/json"
	"testing"

	"google.golang.org/grpc/codes"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// TestPodSandboxStatus: a running pod is Ready with its metadata, labels,
// handler, namespace options and containers; once its VM stops by itself
// it is NotReady and its container Exited with the VM's reason. An
// unknown pod is NotFound.
func TestPodSandboxStatus(t *testing.T) {
	f := newFake(t)
	ctx := context.Background()
	sbID, id := f.startedCtr(t, "web")
	r, err := f.PodSandboxStatus(ctx, &runtimeapi.PodSandboxStatusRequest{PodSandboxId: sbID, Verbose: true})
	if err != nil {
		t.Fatal(err)
	}
	st := r.GetStatus()
	if st.GetId() != sbID || st.GetState() != runtimeapi.PodSandboxState_SANDBOX_READY || st.GetMetadata().GetName() != "web" ||
		st.GetLabels()["app"] != "web" || st.GetRuntimeHandler() != "guest" || st.GetCreatedAt() == 0 ||
		st.GetLinux().GetNamespaces().GetOptions().GetNetwork() != runtimeapi.NamespaceMode_NODE {
		t.Errorf("status of a running pod: %v", st)
	}
	if cs := r.GetContainersStatuses(); len(cs) != 1 || cs[0].GetId() != id || cs[0].GetState() != runtimeapi.ContainerState_CONTAINER_RUNNING {
		t.Errorf("containers: %v", cs)
	}
	// A timestamp makes kubelet v1.37 (EventedPLEG on) lose its active
	// container statuses: see PodSandboxStatus.
	if r.GetTimestamp() != 0 {
		t.Errorf("timestamp %d, want 0", r.GetTimestamp())
	}
	var info struct {
		VMStarted bool   `json:"vmStarted"`
		VMImage   string `json:"vmImage"`
		StateDir  string `json:"stateDir"`
	}
	img, _ := f.images.VMImage(ctx, guestRef)
	if err := json.Unmarshal([]byte(r.GetInfo()["info"]), &info); err != nil || !info.VMStarted || info.VMImage != img.Image.ID() || info.StateDir != f.ctl.Dir(sbID) {
		t.Errorf("verbose info %q: %+v, %v", r.GetInfo()["info"], info, err)
	}

	f.shimOf(t, sbID).StopVM("guest panic")
	r, err = f.PodSandboxStatus(ctx, &runtimeapi.PodSandboxStatusRequest{PodSandboxId: sbID})
	if err != nil {
		t.Fatal(err)
	}
	if r.GetStatus().GetState() != runtimeapi.PodSandboxState_SANDBOX_NOTREADY {
		t.Errorf("pod whose VM stopped: %v", r.GetStatus())
	}
	if cs := r.GetContainersStatuses(); len(cs) != 1 || cs[0].GetState() != runtimeapi.ContainerState_CONTAINER_EXITED || cs[0].GetMessage() != "the VM stopped: guest panic" {
		t.Errorf("containers of a pod whose VM stopped: %v", cs)
	}

	if _, err := f.PodSandboxStatus(ctx, &runtimeapi.PodSandboxStatusRequest{PodSandboxId: "nope"}); grpcCode(err) != codes.NotFound {
		t.Errorf("unknown pod: %v", err)
	}
}

package cri

import (
	"context"
	"testing"

	"google.golang.org/grpc/codes"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/macvz/macvz/runtime/nodevm"
)

// TestNodeVMHidden: the node VM's sandbox and container exist for the
// supervisor's context only. Every other caller (kubelet in the node VM
// above all) lists neither, finds neither by ID, cannot stop or remove
// them (those answer as for an unknown ID, without touching them), and
// cannot make a sandbox with the reserved label.
func TestNodeVMHidden(t *testing.T) {
	f := newFake(t)
	internal := nodevm.WithInternal(context.Background())
	ext := context.Background()

	pod := hostPod(t, "node")
	pod.Labels = map[string]string{nodevm.Label: "true"}
	if _, err := f.RunPodSandbox(ext, &runtimeapi.RunPodSandboxRequest{Config: pod, RuntimeHandler: "guest"}); grpcCode(err) != codes.InvalidArgument {
		t.Errorf("RunPodSandbox with %s from outside: %v, want InvalidArgument", nodevm.Label, err)
	}
	if sbs, _ := f.st.Sandboxes(nil); len(sbs) != 0 {
		t.Errorf("a refused node VM left %d records", len(sbs))
	}

	run, err := f.RunPodSandbox(internal, &runtimeapi.RunPodSandboxRequest{Config: pod, RuntimeHandler: "guest"})
	if err != nil {
		t.Fatalf("RunPodSandbox (supervisor): %v", err)
	}
	nodeID := run.GetPodSandboxId()
	ctr, err := f.CreateContainer(internal, &runtimeapi.CreateContainerRequest{PodSandboxId: nodeID, SandboxConfig: pod,
		Config: &runtimeapi.ContainerConfig{Metadata: &runtimeapi.ContainerMetadata{Name: "kubelet"}, Image: &runtimeapi.ImageSpec{Image: guestRef}, LogPath: "kubelet.log"}})
	if err != nil {
		t.Fatalf("CreateContainer (supervisor): %v", err)
	}
	if _, err := f.StartContainer(internal, &runtimeapi.StartContainerRequest{ContainerId: ctr.GetContainerId()}); err != nil {
		t.Fatalf("StartContainer (supervisor): %v", err)
	}
	podID, podCtr := f.startedCtr(t, "web")

	// The supervisor sees both pods; anyone else sees only web.
	for _, tc := range []struct {
		name string
		ctx  context.Context
		want int
	}{{"supervisor", internal, 2}, {"kubelet", ext, 1}} {
		sbs, err := f.ListPodSandbox(tc.ctx, &runtimeapi.ListPodSandboxRequest{})
		if err != nil || len(sbs.GetItems()) != tc.want {
			t.Errorf("%s: ListPodSandbox: %d items, %v; want %d", tc.name, len(sbs.GetItems()), err, tc.want)
		}
		cs, err := f.ListContainers(tc.ctx, &runtimeapi.ListContainersRequest{})
		if err != nil || len(cs.GetContainers()) != tc.want {
			t.Errorf("%s: ListContainers: %d, %v; want %d", tc.name, len(cs.GetContainers()), err, tc.want)
		}
		st, err := f.ListPodSandboxStats(tc.ctx, &runtimeapi.ListPodSandboxStatsRequest{})
		if err != nil || len(st.GetStats()) > tc.want {
			t.Errorf("%s: ListPodSandboxStats: %d, %v; want at most %d", tc.name, len(st.GetStats()), err, tc.want)
		}
	}
	if _, err := f.PodSandboxStatus(ext, &runtimeapi.PodSandboxStatusRequest{PodSandboxId: nodeID}); grpcCode(err) != codes.NotFound {
		t.Errorf("PodSandboxStatus of the node VM from outside: %v, want NotFound", err)
	}
	if _, err := f.ContainerStatus(ext, &runtimeapi.ContainerStatusRequest{ContainerId: ctr.GetContainerId()}); grpcCode(err) != codes.NotFound {
		t.Errorf("ContainerStatus of kubelet from outside: %v, want NotFound", err)
	}
	if _, err := f.ExecSync(ext, &runtimeapi.ExecSyncRequest{ContainerId: ctr.GetContainerId(), Cmd: []string{"true"}}); grpcCode(err) != codes.NotFound {
		t.Errorf("ExecSync into kubelet from outside: %v, want NotFound", err)
	}
	// Stop and remove are idempotent: an unknown ID is fine, and the node
	// VM stays.
	if _, err := f.StopContainer(ext, &runtimeapi.StopContainerRequest{ContainerId: ctr.GetContainerId()}); err != nil && grpcCode(err) != codes.NotFound {
		t.Errorf("StopContainer of kubelet from outside: %v", err)
	}
	if _, err := f.StopPodSandbox(ext, &runtimeapi.StopPodSandboxRequest{PodSandboxId: nodeID}); err != nil && grpcCode(err) != codes.NotFound {
		t.Errorf("StopPodSandbox of the node VM from outside: %v", err)
	}
	if _, err := f.RemovePodSandbox(ext, &runtimeapi.RemovePodSandboxRequest{PodSandboxId: nodeID}); err != nil && grpcCode(err) != codes.NotFound {
		t.Errorf("RemovePodSandbox of the node VM from outside: %v", err)
	}
	st, err := f.PodSandboxStatus(internal, &runtimeapi.PodSandboxStatusRequest{PodSandboxId: nodeID})
	if err != nil || st.GetStatus().GetState() != runtimeapi.PodSandboxState_SANDBOX_READY {
		t.Errorf("the node VM after outside stop/remove calls: %v, %v; want it ready", st.GetStatus().GetState(), err)
	}
	cst, err := f.ContainerStatus(internal, &runtimeapi.ContainerStatusRequest{ContainerId: ctr.GetContainerId()})
	if err != nil || cst.GetStatus().GetState() != runtimeapi.ContainerState_CONTAINER_RUNNING {
		t.Errorf("kubelet after outside calls: %v, %v; want running", cst.GetStatus().GetState(), err)
	}
	// The ordinary pod is untouched by all this.
	if _, err := f.ContainerStatus(ext, &runtimeapi.ContainerStatusRequest{ContainerId: podCtr}); err != nil {
		t.Errorf("web's container: %v", err)
	}
	if _, err := f.PodSandboxStatus(ext, &runtimeapi.PodSandboxStatusRequest{PodSandboxId: podID}); err != nil {
		t.Errorf("web's sandbox: %v", err)
	}
}

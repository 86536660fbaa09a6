package cri

import (
	"context"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/macvz/macvz/cri/config"
)

// conditions are a Status answer's conditions by type.
func conditions(t *testing.T, s *fake) map[string]*runtimeapi.RuntimeCondition {
	t.Helper()
	r, err := s.Status(context.Background(), &runtimeapi.StatusRequest{})
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]*runtimeapi.RuntimeCondition{}
	for _, c := range r.GetStatus().GetConditions() {
		out[c.GetType()] = c
	}
	return out
}

// TestStatusConditions: the runtime is ready; the network is not (its
// configuration directory is empty), with a reason; VMCapacity counts
// the Linux VMs against max_linux_vms, is false while they are all
// taken (when a boot is refused with ResourceExhausted) and true again
// once one stops.
func TestStatusConditions(t *testing.T) {
	f := newFake(t, func(c *config.Config) { c.VM.MaxLinuxVMs = 1 })
	ctx := context.Background()
	c := conditions(t, f)
	if !c[runtimeapi.RuntimeReady].GetStatus() {
		t.Errorf("RuntimeReady: %v", c[runtimeapi.RuntimeReady])
	}
	if n := c[runtimeapi.NetworkReady]; n == nil || n.GetStatus() || n.GetReason() == "" || n.GetMessage() == "" {
		t.Errorf("NetworkReady without a CNI configuration: %v", n)
	}
	if v := c["VMCapacity"]; !v.GetStatus() || !strings.Contains(v.GetMessage(), "Linux VMs: 0 of 1") {
		t.Errorf("VMCapacity with no VM: %v", v)
	}

	sbID := f.runPod(t, hostPod(t, "one"), "guest")
	if v := conditions(t, f)["VMCapacity"]; v.GetStatus() || v.GetReason() != "LinuxVMSlotsFull" || !strings.Contains(v.GetMessage(), "Linux VMs: 1 of 1") {
		t.Errorf("VMCapacity with every slot taken: %v", v)
	}
	_, err := f.RunPodSandbox(ctx, &runtimeapi.RunPodSandboxRequest{Config: hostPod(t, "two"), RuntimeHandler: "guest"})
	if grpcCode(err) != codes.ResourceExhausted || !strings.Contains(err.Error(), "max_linux_vms") {
		t.Errorf("a boot past the bound: %v, want ResourceExhausted naming max_linux_vms", err)
	}
	if sbs, _ := f.st.Sandboxes(nil); len(sbs) != 1 || len(f.shims.Spawned()) != 1 {
		t.Errorf("after the refused boot: %d sandboxes, %d spawns", len(sbs), len(f.shims.Spawned()))
	}

	if _, err := f.StopPodSandbox(ctx, &runtimeapi.StopPodSandboxRequest{PodSandboxId: sbID}); err != nil {
		t.Fatal(err)
	}
	if v := conditions(t, f)["VMCapacity"]; !v.GetStatus() || !strings.Contains(v.GetMessage(), "Linux VMs: 0 of 1") {
		t.Errorf("VMCapacity once the VM stopped: %v", v)
	}
}

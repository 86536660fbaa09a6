package cri

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/containerd/errdefs"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/macvz/macvz/runtime/shim"
)

// TestCheckpointRestorePod: through the verbs, against the fakes. Bad
// requests are refused with their class; a process container cannot be
// checkpointed alone; a pod's checkpoint restores into a new pod whose
// containers are Created and, once started, are watched and continued
// rather than started again.
func TestCheckpointRestorePod(t *testing.T) {
	f := newFake(t)
	ctx := context.Background()
	pod := hostPod(t, "web")
	sbID := f.runPod(t, pod, "")
	cfg := &runtimeapi.ContainerConfig{Metadata: &runtimeapi.ContainerMetadata{Name: "app"}, Args: []string{"count"}, LogPath: "app.log"}
	id := f.createCtr(t, sbID, pod, cfg)
	if _, err := f.StartContainer(ctx, &runtimeapi.StartContainerRequest{ContainerId: id}); err != nil {
		t.Fatal(err)
	}
	// As the real launcher does.
	b, _ := json.Marshal(f.shims.LastSpawn().Spec)
	os.WriteFile(filepath.Join(f.ctl.Dir(sbID), shim.SpecFile), b, 0o600)

	_, err := f.CheckpointContainer(ctx, &runtimeapi.CheckpointContainerRequest{ContainerId: id, Location: t.TempDir()})
	if !errdefs.IsFailedPrecondition(err) || !strings.Contains(err.Error(), "CheckpointPod") {
		t.Errorf("CheckpointContainer of a process: %v", err)
	}
	out := t.TempDir()
	for name, r := range map[string]*runtimeapi.CheckpointPodRequest{
		"options":   {PodSandboxId: sbID, OutputPath: out, ContainerIds: []string{id}, Options: map[string]string{"x": "y"}},
		"no ids":    {PodSandboxId: sbID, OutputPath: out},
		"twice":     {PodSandboxId: sbID, OutputPath: out, ContainerIds: []string{id, id}},
		"relative":  {PodSandboxId: sbID, OutputPath: "ckpt", ContainerIds: []string{id}},
		"no pod id": {OutputPath: out, ContainerIds: []string{id}},
	} {
		if _, err := f.CheckpointPod(ctx, r); !errdefs.IsInvalidArgument(err) {
			t.Errorf("%s: %v", name, err)
		}
	}
	if _, err := f.CheckpointPod(ctx, &runtimeapi.CheckpointPodRequest{PodSandboxId: sbID, OutputPath: out, ContainerIds: []string{"nope"}}); !errdefs.IsFailedPrecondition(err) {
		t.Errorf("a container not in the pod: %v", err)
	}
	if _, err := f.CheckpointPod(ctx, &runtimeapi.CheckpointPodRequest{PodSandboxId: sbID, OutputPath: out, ContainerIds: []string{id}}); err != nil {
		t.Fatal(err)
	}
	if _, err := f.StopPodSandbox(ctx, &runtimeapi.StopPodSandboxRequest{PodSandboxId: sbID}); err != nil {
		t.Fatal(err)
	}
	if _, err := f.RemovePodSandbox(ctx, &runtimeapi.RemovePodSandboxRequest{PodSandboxId: sbID}); err != nil {
		t.Fatal(err)
	}

	pod2 := hostPod(t, "web2")
	restore := func(path string, cfgs ...*runtimeapi.ContainerConfig) (*runtimeapi.RestorePodResponse, error) {
		return f.RestorePod(ctx, &runtimeapi.RestorePodRequest{CheckpointPath: path, Config: pod2, ContainerConfigs: cfgs})
	}
	if _, err := restore(filepath.Join(out, "nope"), cfg); !errdefs.IsNotFound(err) {
		t.Errorf("a missing checkpoint: %v", err)
	}
	other := &runtimeapi.ContainerConfig{Metadata: &runtimeapi.ContainerMetadata{Name: "other"}, Image: cfg.Image}
	if _, err := restore(out, other); !errdefs.IsInvalidArgument(err) {
		t.Errorf("other container names: %v", err)
	}
	changed := &runtimeapi.ContainerConfig{Metadata: cfg.Metadata, Image: cfg.Image, Args: []string{"something else"}}
	if _, err := restore(out, changed); !errdefs.IsFailedPrecondition(err) {
		t.Errorf("another command: %v", err)
	}
	if l, _ := f.ListPodSandbox(ctx, &runtimeapi.ListPodSandboxRequest{}); len(l.GetItems()) != 0 {
		t.Errorf("refused restores left sandboxes: %v", l.GetItems())
	}
	res, err := restore(out, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if len(res.RestoredContainers) != 1 || res.RestoredContainers[0].Name != "app" || res.RestoredContainers[0].ContainerId != id {
		t.Fatalf("restored: %v", res)
	}
	if st := f.ctrStatus(t, id); st.GetState() != runtimeapi.ContainerState_CONTAINER_CREATED {
		t.Errorf("restored container: %v", st.GetState())
	}
	if _, err := f.StartContainer(ctx, &runtimeapi.StartContainerRequest{ContainerId: id}); err != nil {
		t.Fatal(err)
	}
	sh := f.shimOf(t, res.PodSandboxId)
	if started, _ := sh.Started(); len(started) != 0 {
		t.Errorf("a restored container's process was started again: %v", started)
	}
	w := sh.Watched()
	var sigs []string
	for _, k := range f.shims.Kills() {
		sigs = append(sigs, k.GetContainerId()+" "+strconv.Itoa(int(k.GetSignal())))
	}
	// Stopped and continued for the checkpoint, continued by the start.
	stop, cont := id+" "+strconv.Itoa(int(syscall.SIGSTOP)), id+" "+strconv.Itoa(int(syscall.SIGCONT))
	if len(w) != 1 || w[0].GetContainerId() != id || w[0].GetLogPath() != filepath.Join(pod2.LogDirectory, "app.log") || !slices.Equal(sigs[len(sigs)-3:], []string{stop, cont, cont}) {
		t.Errorf("restored start: watched %v, signals %v", w, sigs)
	}
	if h := sh.Guest.Setup().Hostnames; len(h) != 1 || h[0] != "web2-host" {
		t.Errorf("restored guest's hostname: %v", h)
	}
	if st := f.ctrStatus(t, id); st.GetState() != runtimeapi.ContainerState_CONTAINER_RUNNING {
		t.Errorf("after the start: %v %s %s", st.GetState(), st.GetReason(), st.GetMessage())
	}
}

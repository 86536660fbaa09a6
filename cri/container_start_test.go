package cri

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"

	"github.com/containerd/errdefs"
	"google.golang.org/grpc/codes"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// TestStartContainerProcess: the first container of a pod without a
// handler image boots the VM (sized by the containers, the pod having no
// resources), then the shim is asked to start the process the image's
// default and the container config make, and the container runs.
func TestStartContainerProcess(t *testing.T) {
	f := newFake(t)
	ctx := context.Background()
	pod := hostPod(t, "web")
	pod.Linux.Resources = nil
	sbID := f.runPod(t, pod, "")
	kv := func(k, v string) *runtimeapi.KeyValue { return &runtimeapi.KeyValue{Key: k, Value: []byte(v)} }
	id := f.createCtr(t, sbID, pod, &runtimeapi.ContainerConfig{
		Metadata:   &runtimeapi.ContainerMetadata{Name: "app"},
		Args:       []string{"--port", "8080"},
		Envs:       []*runtimeapi.KeyValue{kv("A", "2"), kv("B", "3")},
		WorkingDir: "/work",
		LogPath:    "app/0.log",
		Linux: &runtimeapi.LinuxContainerConfig{
			Resources: &runtimeapi.LinuxContainerResources{CpuQuota: 250000, CpuPeriod: 100000, MemoryLimitInBytes: 400 << 20},
			SecurityContext: &runtimeapi.LinuxContainerSecurityContext{
				RunAsUser: &runtimeapi.Int64Value{Value: 1000}, RunAsGroup: &runtimeapi.Int64Value{Value: 2000},
				SupplementalGroups: []int64{3000},
				Capabilities:       &runtimeapi.Capability{AddCapabilities: []string{"NET_ADMIN"}, DropCapabilities: []string{"NET_RAW"}},
			},
		},
	})
	if st := f.ctrStatus(t, id); st.GetState() != runtimeapi.ContainerState_CONTAINER_CREATED || st.GetStartedAt() != 0 {
		t.Errorf("before the start: %v", st)
	}
	if n := len(f.shims.Spawned()); n != 0 {
		t.Fatalf("%d shims spawned before StartContainer", n)
	}
	if _, err := f.StartContainer(ctx, &runtimeapi.StartContainerRequest{ContainerId: id}); err != nil {
		t.Fatal(err)
	}

	spec := f.shims.LastSpawn().Spec
	if len(f.shims.Spawned()) != 1 || spec.ID != sbID || spec.CPUs != min(3, runtime.NumCPU()) || spec.MemoryBytes != 400<<20 {
		t.Errorf("VM booted by the start: %d spawns, %+v", len(f.shims.Spawned()), spec)
	}
	sh := f.shimOf(t, sbID)
	reqs, logs := sh.Started()
	if len(reqs) != 1 {
		t.Fatalf("%d processes started, want 1", len(reqs))
	}
	r := reqs[0]
	if r.GetId().GetContainerId() != id || r.GetId().GetExecId() != "" {
		t.Errorf("process ID %v, want container %s", r.GetId(), id)
	}
	if want := []string{"/bin/server", "--port", "8080"}; !slices.Equal(r.GetArgv(), want) {
		t.Errorf("argv %q, want %q (the image's entrypoint, the config's args)", r.GetArgv(), want)
	}
	if want := []string{"A=2", "B=3", defaultPath, "HOSTNAME=web-host"}; !slices.Equal(r.GetEnv(), want) {
		t.Errorf("env %q, want %q", r.GetEnv(), want)
	}
	if r.GetCwd() != "/work" {
		t.Errorf("cwd %q", r.GetCwd())
	}
	if r.GetUid() != 1000 || r.GetGid() != 2000 || !slices.Equal(r.GetAdditionalGids(), []uint32{3000}) || r.GetUsername() != "" || r.GetGidFromPasswd() {
		t.Errorf("user: uid %d gid %d groups %v username %q gidFromPasswd %v", r.GetUid(), r.GetGid(), r.GetAdditionalGids(), r.GetUsername(), r.GetGidFromPasswd())
	}
	if !r.GetRestrictCapabilities() || !slices.Contains(r.GetCapabilities(), "CAP_NET_ADMIN") || slices.Contains(r.GetCapabilities(), "CAP_NET_RAW") || !slices.Contains(r.GetCapabilities(), "CAP_CHOWN") {
		t.Errorf("capabilities: restrict %v %v", r.GetRestrictCapabilities(), r.GetCapabilities())
	}
	wantLog := filepath.Join(pod.GetLogDirectory(), "app", "0.log")
	if !slices.Equal(logs, []string{wantLog}) {
		t.Errorf("log paths %q, want %q", logs, wantLog)
	}
	if fi, err := os.Stat(filepath.Dir(wantLog)); err != nil || !fi.IsDir() {
		t.Errorf("the log's directory was not made: %v", err)
	}
	st := f.ctrStatus(t, id)
	if st.GetState() != runtimeapi.ContainerState_CONTAINER_RUNNING || st.GetStartedAt() == 0 || st.GetLogPath() != wantLog {
		t.Errorf("after the start: %v", st)
	}

	// A running container does not start again.
	_, err := f.StartContainer(ctx, &runtimeapi.StartContainerRequest{ContainerId: id})
	if grpcCode(err) != codes.FailedPrecondition {
		t.Errorf("second start: %v, want FailedPrecondition", err)
	}
	if reqs, _ := sh.Started(); len(reqs) != 1 || len(f.shims.Spawned()) != 1 {
		t.Errorf("second start: %d processes, %d spawns", len(reqs), len(f.shims.Spawned()))
	}
}

// TestStartContainerImageDefaults: with nothing in the config the
// process is the image's default, as its user, with a default PATH.
func TestStartContainerImageDefaults(t *testing.T) {
	f := newFake(t)
	sbID, id := f.startedCtr(t, "web")
	reqs, _ := f.shimOf(t, sbID).Started()
	if len(reqs) != 1 {
		t.Fatalf("%d processes started", len(reqs))
	}
	r := reqs[0]
	if !slices.Equal(r.GetArgv(), []string{"/bin/server", "--port", "80"}) || r.GetCwd() != "/srv" ||
		!slices.Equal(r.GetEnv(), []string{"A=1", defaultPath, "HOSTNAME=web-host"}) || r.GetUid() != 33 || !r.GetGidFromPasswd() {
		t.Errorf("container %s: argv %q cwd %q env %q uid %d gidFromPasswd %v", id, r.GetArgv(), r.GetCwd(), r.GetEnv(), r.GetUid(), r.GetGidFromPasswd())
	}
	if !r.GetRestrictCapabilities() || len(r.GetCapabilities()) != len(defaultCapabilities) {
		t.Errorf("default capabilities: %v %v", r.GetRestrictCapabilities(), r.GetCapabilities())
	}
}

// TestStartContainerProcessFails: a process the shim cannot start leaves
// the container Exited with reason StartError, and the answer keeps the
// class of the shim's error.
func TestStartContainerProcessFails(t *testing.T) {
	f := newFake(t)
	ctx := context.Background()
	pod := hostPod(t, "web")
	sbID := f.runPod(t, pod, "guest")
	id := f.createCtr(t, sbID, pod, &runtimeapi.ContainerConfig{Metadata: &runtimeapi.ContainerMetadata{Name: "app"}, Command: []string{"/no/such/binary"}})
	sh := f.shimOf(t, sbID)
	sh.FailProcesses(fmt.Errorf("exec /no/such/binary: %w", errdefs.ErrNotFound))

	_, err := f.StartContainer(ctx, &runtimeapi.StartContainerRequest{ContainerId: id})
	if grpcCode(err) != codes.NotFound || !strings.Contains(err.Error(), "/no/such/binary") {
		t.Fatalf("StartContainer: %v (code %v), want NotFound naming the binary", err, grpcCode(err))
	}
	st := f.ctrStatus(t, id)
	if st.GetState() != runtimeapi.ContainerState_CONTAINER_EXITED || st.GetReason() != "StartError" || st.GetExitCode() != 128 ||
		!strings.Contains(st.GetMessage(), "/no/such/binary") || st.GetFinishedAt() == 0 {
		t.Errorf("after the failed start: %v", st)
	}
	if reqs, _ := sh.Started(); len(reqs) != 0 {
		t.Errorf("processes recorded: %v", reqs)
	}
	// The VM is unaffected, and the container does not start again.
	if sb, _ := f.st.Sandbox(sbID); !sb.VMStarted || f.shimOf(t, sbID) == nil {
		t.Errorf("sandbox after a failed start: %+v", sb)
	}
	sh.FailProcesses(nil)
	if _, err := f.StartContainer(ctx, &runtimeapi.StartContainerRequest{ContainerId: id}); grpcCode(err) != codes.FailedPrecondition {
		t.Errorf("start of the exited container: %v", err)
	}
}

// TestStartContainerRefusals: unknown containers and containers of a
// stopped pod are refused with their codes, and nothing runs.
func TestStartContainerRefusals(t *testing.T) {
	f := newFake(t)
	ctx := context.Background()
	if _, err := f.StartContainer(ctx, &runtimeapi.StartContainerRequest{ContainerId: "nope"}); grpcCode(err) != codes.NotFound {
		t.Errorf("unknown container: %v", err)
	}
	pod := hostPod(t, "web")
	sbID := f.runPod(t, pod, "")
	id := f.createCtr(t, sbID, pod, &runtimeapi.ContainerConfig{Metadata: &runtimeapi.ContainerMetadata{Name: "app"}})
	if _, err := f.StopPodSandbox(ctx, &runtimeapi.StopPodSandboxRequest{PodSandboxId: sbID}); err != nil {
		t.Fatal(err)
	}
	_, err := f.StartContainer(ctx, &runtimeapi.StartContainerRequest{ContainerId: id})
	if grpcCode(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "not ready") {
		t.Errorf("container of a stopped pod: %v", err)
	}
	if n := len(f.shims.Spawned()); n != 0 {
		t.Errorf("%d VMs booted for refused starts", n)
	}
}

package integration

import (
	"context"
	"encoding/json"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// TestPodResize drives UpdatePodSandboxResources (kubelet's in-place pod
// resize) against a QEMU VM through the CRI: the guest's memory shrinks
// through the balloon and grows back to its boot size; more memory than
// it booted with, or another vCPU count, is FailedPrecondition saying
// why; bad input is InvalidArgument or NotFound.
func TestPodResize(t *testing.T) {
	v := newVMTest(t)
	rc := v.d.runtimeClient(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()

	const mib = 1 << 20
	res := func(mem int64, cpus int64) *runtimeapi.LinuxContainerResources {
		return &runtimeapi.LinuxContainerResources{MemoryLimitInBytes: mem, CpuQuota: cpus * 100000, CpuPeriod: 100000}
	}
	pod := &runtimeapi.PodSandboxConfig{
		Metadata:     &runtimeapi.PodSandboxMetadata{Name: "resize", Namespace: "macvz-test", Uid: "resize-uid"},
		LogDirectory: filepath.Join(v.d.dir, "logs", "resize"),
		Linux: &runtimeapi.LinuxPodSandboxConfig{
			Resources: res(512*mib, 1),
			SecurityContext: &runtimeapi.LinuxSandboxSecurityContext{
				NamespaceOptions: &runtimeapi.NamespaceOption{Network: runtimeapi.NamespaceMode_NODE},
			},
		},
	}
	run, err := rc.RunPodSandbox(ctx, &runtimeapi.RunPodSandboxRequest{Config: pod})
	if err != nil {
		t.Fatal(err)
	}
	sb := run.PodSandboxId
	c, err := rc.CreateContainer(ctx, &runtimeapi.CreateContainerRequest{PodSandboxId: sb, SandboxConfig: pod, Config: &runtimeapi.ContainerConfig{
		Metadata: &runtimeapi.ContainerMetadata{Name: "sleeper"},
		Image:    &runtimeapi.ImageSpec{Image: v.plain},
		Command:  []string{"/bin/sh", "-c", "while :; do sleep 1; done"},
		LogPath:  "sleeper.log",
	}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := rc.StartContainer(ctx, &runtimeapi.StartContainerRequest{ContainerId: c.ContainerId}); err != nil {
		t.Fatal(err)
	}
	// The guest's MemTotal: the balloon's pages leave it.
	memTotal := func() int64 {
		t.Helper()
		r, err := rc.ExecSync(ctx, &runtimeapi.ExecSyncRequest{ContainerId: c.ContainerId, Cmd: []string{"cat", "/proc/meminfo"}, Timeout: 30})
		if err != nil || r.ExitCode != 0 {
			t.Fatalf("cat /proc/meminfo: %v %s", err, r.GetStderr())
		}
		for _, l := range strings.Split(string(r.Stdout), "\n") {
			if f := strings.Fields(l); len(f) >= 2 && f[0] == "MemTotal:" {
				kb, err := strconv.ParseInt(f[1], 10, 64)
				if err != nil {
					t.Fatal(err)
				}
				return kb << 10
			}
		}
		t.Fatalf("no MemTotal in the guest's /proc/meminfo:\n%s", r.Stdout)
		return 0
	}
	update := func(r *runtimeapi.LinuxContainerResources) error {
		_, err := rc.UpdatePodSandboxResources(ctx, &runtimeapi.UpdatePodSandboxResourcesRequest{PodSandboxId: sb, Resources: r})
		return err
	}
	waitMem := func(what string, ok func(int64) bool) int64 {
		t.Helper()
		var m int64
		waitFor(t, what, 60*time.Second, func() bool { m = memTotal(); return ok(m) })
		return m
	}
	booted := memTotal()
	if booted > 512*mib || booted < 400*mib {
		t.Fatalf("the guest booted with MemTotal %d MiB; want a little under the pod's 512 MiB", booted/mib)
	}

	if err := update(res(256*mib, 1)); err != nil {
		t.Fatalf("resize to 256 MiB: %v", err)
	}
	small := waitMem("the guest to give memory back", func(m int64) bool { return m <= booted-200*mib })
	var inspect struct {
		Info struct {
			VM struct {
				CPUs              int   `json:"cpus"`
				MemoryBytes       int64 `json:"memoryBytes"`
				MemoryTargetBytes int64 `json:"memoryTargetBytes"`
			} `json:"vm"`
		} `json:"info"`
	}
	if err := json.Unmarshal([]byte(v.d.mustCrictl("inspectp", sb)), &inspect); err != nil {
		t.Fatal(err)
	}
	if vm := inspect.Info.VM; vm.CPUs != 1 || vm.MemoryBytes != 512*mib || vm.MemoryTargetBytes != 256*mib {
		t.Errorf("crictl inspectp info.vm: %+v; want 1 vCPU, 512 MiB booted, 256 MiB target", vm)
	}
	if err := update(res(512*mib, 1)); err != nil {
		t.Fatalf("resize back to 512 MiB: %v", err)
	}
	waitMem("the guest to get its memory back", func(m int64) bool { return m >= booted-8*mib })
	t.Logf("guest MemTotal: %d MiB booted, %d MiB at 256 MiB, back to its boot size", booted/mib, small/mib)

	code := func(err error) codes.Code { return status.Code(err) }
	if err := update(res(1024*mib, 1)); code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "boot size") {
		t.Errorf("more memory than the VM booted with: %v; want FailedPrecondition naming the boot size", err)
	}
	if runtime.NumCPU() >= 2 {
		if err := update(res(512*mib, 2)); code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "vCPUs") {
			t.Errorf("another vCPU count: %v; want FailedPrecondition naming the vCPUs", err)
		}
	}
	if m := memTotal(); m < booted-8*mib {
		t.Errorf("refused resizes changed the guest's memory: MemTotal %d MiB", m/mib)
	}
	if err := update(&runtimeapi.LinuxContainerResources{MemoryLimitInBytes: -1}); code(err) != codes.InvalidArgument {
		t.Errorf("a negative memory limit: %v", err)
	}
	if err := update(nil); code(err) != codes.InvalidArgument {
		t.Errorf("no resources: %v", err)
	}
	_, err = rc.UpdatePodSandboxResources(ctx, &runtimeapi.UpdatePodSandboxResourcesRequest{PodSandboxId: "nosuch", Resources: res(256*mib, 1)})
	if code(err) != codes.NotFound {
		t.Errorf("an unknown sandbox: %v", err)
	}
}

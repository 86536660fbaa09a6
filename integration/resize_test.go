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
// resize) and UpdateContainerResources against a QEMU VM through the
// CRI: the guest's memory shrinks through the balloon and grows back to
// its boot size; a pod CPU limit below the vCPUs becomes the guest pod
// cgroup's quota; a running container's new limits reach its cgroup in
// the guest at once; more memory than the VM booted with, more vCPUs, or
// new limits for a container started without any are
// FailedPrecondition saying why; bad input is InvalidArgument or
// NotFound.
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
		if err := update(res(512*mib, 2)); code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "cannot add vCPUs") {
			t.Errorf("more vCPUs than the VM runs: %v; want FailedPrecondition saying a running VM cannot add vCPUs", err)
		}
	}
	// A guest file, read in the VM's own namespaces through the sleeper.
	cat := func(path string) string {
		t.Helper()
		r, err := rc.ExecSync(ctx, &runtimeapi.ExecSyncRequest{ContainerId: c.ContainerId, Cmd: []string{"cat", path}, Timeout: 30})
		if err != nil || r.ExitCode != 0 {
			t.Fatalf("cat %s in the guest: %v %s", path, err, r.GetStderr())
		}
		return strings.TrimSpace(string(r.Stdout))
	}
	// Half a CPU for the pod: its VM keeps its vCPU, the guest's pod
	// cgroup gets the quota; the whole CPU again lifts it.
	if err := update(&runtimeapi.LinuxContainerResources{MemoryLimitInBytes: 512 * mib, CpuQuota: 50000, CpuPeriod: 100000}); err != nil {
		t.Fatalf("a pod CPU limit of 500m in a 1-vCPU VM: %v", err)
	}
	if got := cat("/sys/fs/cgroup/macvz/cpu.max"); got != "50000 100000" {
		t.Errorf("the guest pod cgroup's cpu.max at 500m: %q", got)
	}
	if err := update(res(512*mib, 1)); err != nil {
		t.Fatal(err)
	}
	if got := cat("/sys/fs/cgroup/macvz/cpu.max"); got != "max 100000" {
		t.Errorf("the guest pod cgroup's cpu.max back at the VM's vCPU: %q", got)
	}

	// A running container's limits change in its cgroup at once.
	lim, err := rc.CreateContainer(ctx, &runtimeapi.CreateContainerRequest{PodSandboxId: sb, SandboxConfig: pod, Config: &runtimeapi.ContainerConfig{
		Metadata: &runtimeapi.ContainerMetadata{Name: "limited"},
		Image:    &runtimeapi.ImageSpec{Image: v.plain},
		Command:  []string{"/bin/sh", "-c", "while :; do sleep 1; done"},
		LogPath:  "limited.log",
		Linux:    &runtimeapi.LinuxContainerConfig{Resources: &runtimeapi.LinuxContainerResources{MemoryLimitInBytes: 128 * mib, CpuQuota: 50000, CpuPeriod: 100000}},
	}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := rc.StartContainer(ctx, &runtimeapi.StartContainerRequest{ContainerId: lim.ContainerId}); err != nil {
		t.Fatal(err)
	}
	cg := "/sys/fs/cgroup/macvz/" + lim.ContainerId
	if m, q := cat(cg+"/memory.max"), cat(cg+"/cpu.max"); m != strconv.Itoa(128*mib) || q != "50000 100000" {
		t.Errorf("the limited container's cgroup at its start: memory.max %s, cpu.max %s", m, q)
	}
	newRes := &runtimeapi.LinuxContainerResources{MemoryLimitInBytes: 96 * mib, CpuQuota: 25000, CpuPeriod: 100000}
	if _, err := rc.UpdateContainerResources(ctx, &runtimeapi.UpdateContainerResourcesRequest{ContainerId: lim.ContainerId, Linux: newRes}); err != nil {
		t.Fatalf("UpdateContainerResources of a running container: %v", err)
	}
	if m, q := cat(cg+"/memory.max"), cat(cg+"/cpu.max"); m != strconv.Itoa(96*mib) || q != "25000 100000" {
		t.Errorf("the limited container's cgroup after UpdateContainerResources: memory.max %s, cpu.max %s", m, q)
	}
	st, err := rc.ContainerStatus(ctx, &runtimeapi.ContainerStatusRequest{ContainerId: lim.ContainerId})
	if err != nil {
		t.Fatal(err)
	}
	if r := st.GetStatus().GetResources().GetLinux(); r.GetMemoryLimitInBytes() != 96*mib || r.GetCpuQuota() != 25000 {
		t.Errorf("ContainerStatus resources after the update: %v", r)
	}
	// The sleeper started without limits: no cgroup to change, and its
	// status keeps what it runs with.
	_, err = rc.UpdateContainerResources(ctx, &runtimeapi.UpdateContainerResourcesRequest{ContainerId: c.ContainerId, Linux: newRes})
	if code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "no cgroup") {
		t.Errorf("new limits for a container started without any: %v; want FailedPrecondition naming its missing cgroup", err)
	}
	if st, err := rc.ContainerStatus(ctx, &runtimeapi.ContainerStatusRequest{ContainerId: c.ContainerId}); err != nil || st.GetStatus().GetResources().GetLinux().GetMemoryLimitInBytes() != 0 {
		t.Errorf("the sleeper's status after a refused update: %v %v", err, st.GetStatus().GetResources())
	}
	if _, err := rc.UpdateContainerResources(ctx, &runtimeapi.UpdateContainerResourcesRequest{ContainerId: lim.ContainerId, Linux: &runtimeapi.LinuxContainerResources{MemoryLimitInBytes: 1}}); code(err) != codes.InvalidArgument {
		t.Errorf("a 1-byte memory limit: %v", err)
	}
	if _, err := rc.UpdateContainerResources(ctx, &runtimeapi.UpdateContainerResourcesRequest{ContainerId: "nosuch", Linux: newRes}); code(err) != codes.NotFound {
		t.Errorf("an unknown container: %v", err)
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

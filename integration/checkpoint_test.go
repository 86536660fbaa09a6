package integration

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// TestCheckpointPod: a pod's VM is checkpointed through the CRI while a
// guest process counts in memory, the pod is removed, and RestorePod
// brings it back under a new name and hostname: the count goes on from
// where it was, not from 0. Bad input (a missing or non-empty output
// directory, a process container checkpointed alone, tampered manifests)
// gets its code and leaves nothing behind.
func TestCheckpointPod(t *testing.T) {
	v := newVMTest(t)
	rc := v.d.runtimeClient(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()

	podCfg := func(name string) *runtimeapi.PodSandboxConfig {
		return &runtimeapi.PodSandboxConfig{
			Metadata:     &runtimeapi.PodSandboxMetadata{Name: name, Namespace: "macvz-test", Uid: name + "-uid"},
			Hostname:     name,
			LogDirectory: filepath.Join(v.d.dir, "logs", name),
			Linux: &runtimeapi.LinuxPodSandboxConfig{SecurityContext: &runtimeapi.LinuxSandboxSecurityContext{
				NamespaceOptions: &runtimeapi.NamespaceOption{Network: runtimeapi.NamespaceMode_NODE},
			}},
		}
	}
	// The counter lives in the shell's memory only: the log is where the
	// test reads it, with the shell's pid (a process started again would
	// have another).
	counterCfg := &runtimeapi.ContainerConfig{
		Metadata: &runtimeapi.ContainerMetadata{Name: "counter"},
		Image:    &runtimeapi.ImageSpec{Image: v.plain},
		Command:  []string{"/bin/sh", "-c", "i=0; while :; do i=$((i+1)); echo $$ $i; sleep 0.2; done"},
		LogPath:  "counter.log",
	}
	vmCfg := &runtimeapi.ContainerConfig{
		Metadata: &runtimeapi.ContainerMetadata{Name: "vm"},
		Image:    &runtimeapi.ImageSpec{Image: v.plain},
		LogPath:  "vm.log",
	}
	podA := podCfg("ckpt-a")
	runA, err := rc.RunPodSandbox(ctx, &runtimeapi.RunPodSandboxRequest{Config: podA})
	if err != nil {
		t.Fatal(err)
	}
	start := func(pod string, cfg *runtimeapi.ContainerConfig, podCfg *runtimeapi.PodSandboxConfig) string {
		t.Helper()
		c, err := rc.CreateContainer(ctx, &runtimeapi.CreateContainerRequest{PodSandboxId: pod, Config: cfg, SandboxConfig: podCfg})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := rc.StartContainer(ctx, &runtimeapi.StartContainerRequest{ContainerId: c.ContainerId}); err != nil {
			t.Fatal(err)
		}
		return c.ContainerId
	}
	vmA := start(runA.PodSandboxId, vmCfg, podA)
	counterA := start(runA.PodSandboxId, counterCfg, podA)
	logA := filepath.Join(podA.LogDirectory, "counter.log")
	waitFor(t, "the counter to reach 5", 90*time.Second, func() bool { return lastCount(logA) >= 5 })

	// Bad output directories: nothing written, the VM runs on.
	if _, err := rc.CheckpointPod(ctx, &runtimeapi.CheckpointPodRequest{PodSandboxId: runA.PodSandboxId, OutputPath: filepath.Join(v.d.dir, "no-such-dir"), ContainerIds: []string{vmA, counterA}}); status.Code(err) != codes.NotFound {
		t.Errorf("checkpoint into a missing directory: %v, want NotFound", err)
	}
	full := filepath.Join(v.d.dir, "full")
	os.MkdirAll(full, 0o700)
	os.WriteFile(filepath.Join(full, "user-data"), []byte("keep me"), 0o600)
	if _, err := rc.CheckpointPod(ctx, &runtimeapi.CheckpointPodRequest{PodSandboxId: runA.PodSandboxId, OutputPath: full, ContainerIds: []string{vmA, counterA}}); status.Code(err) != codes.FailedPrecondition {
		t.Errorf("checkpoint into a non-empty directory: %v, want FailedPrecondition", err)
	}
	if ents, _ := os.ReadDir(full); len(ents) != 1 {
		t.Errorf("a refused checkpoint changed the directory: %v", ents)
	}
	empty := t.TempDir()
	if _, err := rc.CheckpointPod(ctx, &runtimeapi.CheckpointPodRequest{PodSandboxId: runA.PodSandboxId, OutputPath: empty, ContainerIds: []string{counterA}}); status.Code(err) != codes.InvalidArgument {
		t.Errorf("checkpoint of part of the pod: %v, want InvalidArgument", err)
	}
	// A process container alone: crictl checkpoint says to use CheckpointPod.
	out, err := v.d.crictl("checkpoint", "--export", empty, counterA)
	if err == nil || !strings.Contains(out, "CheckpointPod") {
		t.Errorf("crictl checkpoint of a process container: %v\n%s", err, out)
	}
	if ents, _ := os.ReadDir(empty); len(ents) != 0 {
		t.Errorf("a refused checkpoint left files: %v", ents)
	}

	// A deadline that passes during the checkpoint: an error, nothing
	// left, the VM and the counter run on.
	for _, d := range []time.Duration{50 * time.Millisecond, 250 * time.Millisecond} {
		dctx, dcancel := context.WithTimeout(ctx, d)
		_, err := rc.CheckpointPod(dctx, &runtimeapi.CheckpointPodRequest{PodSandboxId: runA.PodSandboxId, OutputPath: empty, ContainerIds: []string{vmA, counterA}})
		dcancel()
		// The call's end is not the checkpoint's: wait for the daemon to
		// have let go of the pod (its lock, which a checkpoint into the
		// non-empty directory takes before it is refused) before looking.
		if _, serr := rc.CheckpointPod(ctx, &runtimeapi.CheckpointPodRequest{PodSandboxId: runA.PodSandboxId, OutputPath: full, ContainerIds: []string{vmA, counterA}}); status.Code(serr) != codes.FailedPrecondition {
			t.Fatal(serr)
		}
		n := lastCount(logA)
		t.Logf("checkpoint with a %v deadline: %v", d, err)
		waitFor(t, "the counter to go on after a checkpoint past its deadline", 30*time.Second, func() bool { return lastCount(logA) > n+2 })
		// The daemon checks the deadline after its last write; only the
		// answer's way back comes after, and a deadline passing there
		// leaves a whole checkpoint the daemon reported made.
		committed := strings.Contains(v.d.log.String(), `msg="sandbox checkpointed" sandbox=`+runA.PodSandboxId+` dir=`+empty+` `)
		if err == nil || committed {
			// Fast enough after all: start again from an empty directory.
			if err != nil {
				t.Logf("the checkpoint was made before its deadline, the answer came after it")
			}
			empty = t.TempDir()
			continue
		}
		if ents, _ := os.ReadDir(empty); len(ents) != 0 {
			t.Errorf("a checkpoint past its deadline left files: %v", ents)
		}
	}
	for _, l := range strings.Split(v.d.log.String(), "\n") {
		if strings.Contains(l, "checkpoint failed") {
			t.Logf("daemon: %s", l[strings.Index(l, "msg="):])
		}
	}

	// The checkpoint, through crictl: CheckpointContainer of the
	// container standing for the VM checkpoints the pod.
	dir := filepath.Join(v.d.dir, "checkpoint")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	before := lastCount(logA)
	t0 := time.Now()
	if out, err := v.d.crictl("checkpoint", "--export", dir, vmA); err != nil {
		t.Fatalf("crictl checkpoint of the VM container: %v\n%s", err, out)
	}
	after := lastCount(logA)
	t.Logf("checkpointed in %v, counter %d..%d", time.Since(t0).Round(time.Millisecond), before, after)
	for _, f := range []string{"checkpoint.json", "state"} {
		if _, err := os.Stat(filepath.Join(dir, f)); err != nil {
			t.Errorf("checkpoint: %v", err)
		}
	}
	// The VM was resumed and its process continued.
	waitFor(t, "the counter to go on after the checkpoint", 30*time.Second, func() bool { return lastCount(logA) > after+2 })
	last := lastCount(logA)

	// Tampered manifests: refused before anything is made.
	mb, err := os.ReadFile(filepath.Join(dir, "checkpoint.json"))
	if err != nil {
		t.Fatal(err)
	}
	tamper := func(name string, edit func(m map[string]any)) string {
		var m map[string]any
		if err := json.Unmarshal(mb, &m); err != nil {
			t.Fatal(err)
		}
		edit(m)
		d := filepath.Join(v.d.dir, "tampered-"+name)
		os.MkdirAll(d, 0o700)
		b, _ := json.Marshal(m)
		os.WriteFile(filepath.Join(d, "checkpoint.json"), b, 0o600)
		return d
	}
	podB := podCfg("ckpt-b")
	restore := func(path string) (*runtimeapi.RestorePodResponse, error) {
		return rc.RestorePod(ctx, &runtimeapi.RestorePodRequest{CheckpointPath: path, Config: podB, ContainerConfigs: []*runtimeapi.ContainerConfig{vmCfg, counterCfg}})
	}
	os.WriteFile(filepath.Join(v.d.dir, "secret"), []byte("host data"), 0o600)
	for _, tc := range []struct {
		path string
		code codes.Code
	}{
		{filepath.Join(v.d.dir, "no-such-checkpoint"), codes.NotFound},
		{full, codes.InvalidArgument}, // no manifest
		{tamper("backend", func(m map[string]any) { m["backend"] = "vz" }), codes.FailedPrecondition},
		{tamper("host", func(m map[string]any) { m["hostArch"] = "arm64" }), codes.FailedPrecondition},
		{tamper("version", func(m map[string]any) { m["version"] = 99 }), codes.FailedPrecondition},
		{tamper("disk", func(m map[string]any) {
			m["disks"] = []any{map[string]any{"name": "../secret", "size": 9}}
		}), codes.InvalidArgument},
		{tamper("state", func(m map[string]any) { m["state"].(map[string]any)["name"] = "../secret" }), codes.InvalidArgument},
		{tamper("missing", func(m map[string]any) {}), codes.InvalidArgument}, // the state is not there
	} {
		if _, err := restore(tc.path); status.Code(err) != tc.code {
			t.Errorf("restore from %s: %v, want %v", filepath.Base(tc.path), err, tc.code)
		}
	}
	if pods, err := rc.ListPodSandbox(ctx, &runtimeapi.ListPodSandboxRequest{}); err != nil || len(pods.Items) != 1 {
		t.Errorf("refused restores left sandboxes: %v %v", pods, err)
	}

	// The original goes; its checkpoint brings it back.
	if _, err := rc.StopPodSandbox(ctx, &runtimeapi.StopPodSandboxRequest{PodSandboxId: runA.PodSandboxId}); err != nil {
		t.Fatal(err)
	}
	if _, err := rc.RemovePodSandbox(ctx, &runtimeapi.RemovePodSandboxRequest{PodSandboxId: runA.PodSandboxId}); err != nil {
		t.Fatal(err)
	}
	res, err := restore(dir)
	if err != nil {
		t.Fatalf("RestorePod: %v", err)
	}
	ids := map[string]string{}
	for _, c := range res.RestoredContainers {
		ids[c.Name] = c.ContainerId
		st, err := rc.ContainerStatus(ctx, &runtimeapi.ContainerStatusRequest{ContainerId: c.ContainerId})
		if err != nil || st.Status.State != runtimeapi.ContainerState_CONTAINER_CREATED {
			t.Errorf("restored container %s: %v %v, want CREATED", c.Name, st.GetStatus().GetState(), err)
		}
	}
	if len(ids) != 2 || ids["vm"] == "" || ids["counter"] == "" {
		t.Fatalf("restored containers: %v", res.RestoredContainers)
	}
	for _, n := range []string{"vm", "counter"} {
		if _, err := rc.StartContainer(ctx, &runtimeapi.StartContainerRequest{ContainerId: ids[n]}); err != nil {
			t.Fatalf("starting restored container %s: %v", n, err)
		}
	}
	logB := filepath.Join(podB.LogDirectory, "counter.log")
	waitFor(t, "the restored counter to count", 60*time.Second, func() bool { return firstCount(logB) > 0 && lastCount(logB) > firstCount(logB)+2 })
	// The restored log starts with what the guest still held of the
	// output unacknowledged at the checkpoint (the agent keeps output
	// until the host acknowledges it), then goes on: one process, one
	// count, never back to 1.
	waitFor(t, "the restored counter to pass the checkpoint", 60*time.Second, func() bool { return lastCount(logB) > after+3 })
	pidA, pidB := counterPIDs(logA), counterPIDs(logB)
	cb := counts(logB)
	t.Logf("restored counter: %d..%d (checkpointed between %d and %d; the original went on to %d), pids %v %v", cb[0], cb[len(cb)-1], before, after, last, pidA, pidB)
	if len(pidA) != 1 || !slices.Equal(pidA, pidB) {
		t.Errorf("the restored counter is another process: pids %v before, %v after", pidA, pidB)
	}
	if cb[0] > after+1 {
		t.Errorf("the restored log starts at %d, past the checkpoint (%d..%d)", cb[0], before, after)
	}
	for i := 1; i < len(cb); i++ {
		if cb[i] != cb[i-1]+1 {
			t.Errorf("the restored count jumps from %d to %d: %v", cb[i-1], cb[i], cb)
			break
		}
	}
	// The new identity.
	ex, err := rc.ExecSync(ctx, &runtimeapi.ExecSyncRequest{ContainerId: ids["counter"], Cmd: []string{"hostname"}, Timeout: 30})
	if err != nil || strings.TrimSpace(string(ex.Stdout)) != "ckpt-b" {
		t.Errorf("the restored guest's hostname: %q %v, want ckpt-b", ex.GetStdout(), err)
	}
	// Restoring again while the restored pod has the containers' IDs.
	if _, err := restore(dir); status.Code(err) != codes.FailedPrecondition {
		t.Errorf("a second restore while the first exists: %v, want FailedPrecondition", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "checkpoint.json")); err != nil {
		t.Errorf("the checkpoint was changed by the restore: %v", err)
	}
	if _, err := rc.StopPodSandbox(ctx, &runtimeapi.StopPodSandboxRequest{PodSandboxId: res.PodSandboxId}); err != nil {
		t.Fatal(err)
	}
	if _, err := rc.RemovePodSandbox(ctx, &runtimeapi.RemovePodSandboxRequest{PodSandboxId: res.PodSandboxId}); err != nil {
		t.Fatal(err)
	}

	// A pod with a volume cannot be checkpointed on QEMU (its 9p share
	// stays mounted for the volume, and QEMU cannot migrate then): a
	// clear refusal, and the volume still works after it.
	vol := filepath.Join(v.d.dir, "vol")
	os.MkdirAll(vol, 0o755)
	podC := podCfg("ckpt-c")
	runC, err := rc.RunPodSandbox(ctx, &runtimeapi.RunPodSandboxRequest{Config: podC})
	if err != nil {
		t.Fatal(err)
	}
	volCtr := start(runC.PodSandboxId, &runtimeapi.ContainerConfig{
		Metadata: &runtimeapi.ContainerMetadata{Name: "writer"},
		Image:    &runtimeapi.ImageSpec{Image: v.plain},
		Command:  []string{"/bin/sh", "-c", "sleep 3600"},
		Mounts:   []*runtimeapi.Mount{{HostPath: vol, ContainerPath: "/data"}},
	}, podC)
	_, err = rc.CheckpointPod(ctx, &runtimeapi.CheckpointPodRequest{PodSandboxId: runC.PodSandboxId, OutputPath: t.TempDir(), ContainerIds: []string{volCtr}})
	if status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "volumes") {
		t.Errorf("checkpoint of a pod with a volume: %v, want FailedPrecondition about volumes", err)
	}
	if ex, err := rc.ExecSync(ctx, &runtimeapi.ExecSyncRequest{ContainerId: volCtr, Cmd: []string{"sh", "-c", "echo still > /data/after"}, Timeout: 30}); err != nil || ex.ExitCode != 0 {
		t.Errorf("writing the volume after the refused checkpoint: %v %s", err, ex.GetStderr())
	}
	if b, err := os.ReadFile(filepath.Join(vol, "after")); err != nil || string(b) != "still\n" {
		t.Errorf("the volume after the refused checkpoint: %q %v", b, err)
	}
}

// counts are the numbers a counter container logged (CRI log lines
// "<time> stdout F <pid> <n>").
func counts(path string) []int {
	var out []int
	for _, f := range counterLines(path) {
		if n, err := strconv.Atoi(f[4]); err == nil {
			out = append(out, n)
		}
	}
	return out
}

// counterPIDs are the distinct pids a counter container logged.
func counterPIDs(path string) []string {
	var out []string
	for _, f := range counterLines(path) {
		if !slices.Contains(out, f[3]) {
			out = append(out, f[3])
		}
	}
	return out
}

func counterLines(path string) [][]string {
	b, _ := os.ReadFile(path)
	var out [][]string
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) == 5 {
			out = append(out, f)
		}
	}
	return out
}

func lastCount(path string) int {
	c := counts(path)
	if len(c) == 0 {
		return 0
	}
	return c[len(c)-1]
}

func firstCount(path string) int {
	c := counts(path)
	if len(c) == 0 {
		return 0
	}
	return c[0]
}

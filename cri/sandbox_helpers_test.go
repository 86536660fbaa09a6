package cri

import (
	"runtime"
	"slices"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/containerd/errdefs"
	"google.golang.org/protobuf/proto"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/macvz/macvz/cri/config"
	"github.com/macvz/macvz/runtime/store"
	"github.com/macvz/macvz/vmimage"
)

func TestVMSize(t *testing.T) {
	cfg := config.VM{DefaultCPUs: 1, DefaultMemoryBytes: 512 << 20}
	desc := &vmimage.Descriptor{MinCPUs: 1, MinMemoryBytes: 256 << 20}
	res := func(quota, period, shares, mem int64) *runtimeapi.LinuxContainerResources {
		return &runtimeapi.LinuxContainerResources{CpuQuota: quota, CpuPeriod: period, CpuShares: shares, MemoryLimitInBytes: mem}
	}
	pod := func(r *runtimeapi.LinuxContainerResources) *runtimeapi.PodSandboxConfig {
		return &runtimeapi.PodSandboxConfig{Linux: &runtimeapi.LinuxPodSandboxConfig{Resources: r}}
	}
	ctr := func(r *runtimeapi.LinuxContainerResources) *runtimeapi.ContainerConfig {
		return &runtimeapi.ContainerConfig{Linux: &runtimeapi.LinuxContainerConfig{Resources: r}}
	}
	for _, tc := range []struct {
		name   string
		pod    *runtimeapi.PodSandboxConfig
		ctrs   []*runtimeapi.ContainerConfig
		desc   *vmimage.Descriptor
		cpus   int
		memMiB int64
	}{
		{"defaults", pod(nil), nil, desc, 1, 512},
		{"pod limit", pod(res(150000, 100000, 0, 1<<30)), nil, desc, min(2, runtime.NumCPU()), 1024},
		{"containers summed", pod(nil), []*runtimeapi.ContainerConfig{ctr(res(50000, 100000, 0, 300<<20)), ctr(res(0, 0, 1024, 200<<20))}, desc, min(2, runtime.NumCPU()), 500},
		{"request shares only", pod(res(0, 0, 512, 0)), nil, desc, 1, 512},
		{"image minimum wins", pod(res(0, 0, 0, 100<<20)), nil, &vmimage.Descriptor{MinMemoryBytes: 2 << 30}, 1, 2048},
		{"clamped to the host", pod(res(64000000, 100000, 0, 0)), nil, desc, runtime.NumCPU(), 512},
		{"rounded up to MiB", pod(res(0, 0, 0, 300<<20+1)), nil, desc, 1, 301},
	} {
		cpus, mem := vmSize(cfg, tc.pod, tc.ctrs, tc.desc)
		if cpus != tc.cpus || mem != tc.memMiB<<20 {
			t.Errorf("%s: %d CPUs, %d MiB; want %d, %d", tc.name, cpus, mem>>20, tc.cpus, tc.memMiB)
		}
	}
}

func TestUserOf(t *testing.T) {
	i64 := func(v int64) *runtimeapi.Int64Value { return &runtimeapi.Int64Value{Value: v} }
	for _, tc := range []struct {
		name      string
		sc        *runtimeapi.LinuxContainerSecurityContext
		image     string
		want      procUser
		wantError bool
	}{
		{"nothing: root, its passwd group", nil, "", procUser{gidFromPasswd: true}, false},
		{"image uid", nil, "1000", procUser{uid: 1000, gidFromPasswd: true}, false},
		{"image uid:gid", nil, "1000:50", procUser{uid: 1000, gid: 50}, false},
		{"image name", nil, "www-data", procUser{username: "www-data", gidFromPasswd: true}, false},
		{"image name:gid", nil, "www-data:7", procUser{username: "www-data", gid: 7}, false},
		{"image group name", nil, "1000:staff", procUser{}, true},
		{"run_as_user overrides a name", &runtimeapi.LinuxContainerSecurityContext{RunAsUser: i64(7)}, "www-data:50", procUser{uid: 7, gid: 50}, false},
		{"run_as_group and groups", &runtimeapi.LinuxContainerSecurityContext{RunAsUser: i64(7), RunAsGroup: i64(8), SupplementalGroups: []int64{9, 10}}, "", procUser{uid: 7, gid: 8, groups: []uint32{9, 10}}, false},
		{"run_as_username", &runtimeapi.LinuxContainerSecurityContext{RunAsUsername: "nobody"}, "1000", procUser{username: "nobody", gidFromPasswd: true}, false},
	} {
		got, err := userOf(tc.sc, tc.image)
		if tc.wantError {
			if !errdefs.IsInvalidArgument(err) {
				t.Errorf("%s: err %v, want InvalidArgument", tc.name, err)
			}
			continue
		}
		if err != nil || got.uid != tc.want.uid || got.gid != tc.want.gid || got.username != tc.want.username ||
			got.gidFromPasswd != tc.want.gidFromPasswd || !slices.Equal(got.groups, tc.want.groups) {
			t.Errorf("%s: %+v %v; want %+v", tc.name, got, err, tc.want)
		}
	}
}

func TestProcessOf(t *testing.T) {
	def := &vmimage.Process{Entrypoint: []string{"/bin/httpd"}, Cmd: []string{"-p", "80"}, Env: []string{"PATH=/bin", "A=1"}, WorkingDir: "/www", User: "33"}
	kv := func(k, v string) *runtimeapi.KeyValue { return &runtimeapi.KeyValue{Key: k, Value: []byte(v)} }
	for _, tc := range []struct {
		name string
		cfg  *runtimeapi.ContainerConfig
		argv []string
		env  []string
		cwd  string
	}{
		{"image default", &runtimeapi.ContainerConfig{}, []string{"/bin/httpd", "-p", "80"}, []string{"PATH=/bin", "A=1"}, "/www"},
		{"args replace cmd", &runtimeapi.ContainerConfig{Args: []string{"-p", "8080"}}, []string{"/bin/httpd", "-p", "8080"}, []string{"PATH=/bin", "A=1"}, "/www"},
		{"command replaces both", &runtimeapi.ContainerConfig{Command: []string{"sh"}, WorkingDir: "/tmp"}, []string{"sh"}, []string{"PATH=/bin", "A=1"}, "/tmp"},
		{"env overrides and adds", &runtimeapi.ContainerConfig{Envs: []*runtimeapi.KeyValue{kv("A", "2"), kv("B", "3")}}, []string{"/bin/httpd", "-p", "80"}, []string{"PATH=/bin", "A=2", "B=3"}, "/www"},
	} {
		argv, env, cwd, user := processOf(def, tc.cfg)
		if !slices.Equal(argv, tc.argv) || !slices.Equal(env, tc.env) || cwd != tc.cwd || user != "33" {
			t.Errorf("%s: %v %v %q %q", tc.name, argv, env, cwd, user)
		}
	}
	if argv, _, _, _ := processOf(nil, &runtimeapi.ContainerConfig{}); len(argv) != 0 {
		t.Errorf("no default, no command: %v", argv)
	}
	// The image's env is not modified in place.
	processOf(def, &runtimeapi.ContainerConfig{Envs: []*runtimeapi.KeyValue{kv("A", "9")}})
	if def.Env[1] != "A=1" {
		t.Errorf("image env modified: %v", def.Env)
	}
}

func TestCompleteEnv(t *testing.T) {
	if got := completeEnv(nil, "h"); !slices.Equal(got, []string{defaultPath, "HOSTNAME=h"}) {
		t.Errorf("empty env: %v", got)
	}
	if got := completeEnv([]string{"PATH=/x", "HOSTNAME=y"}, "h"); !slices.Equal(got, []string{"PATH=/x", "HOSTNAME=y"}) {
		t.Errorf("set env changed: %v", got)
	}
}

func TestValidateResources(t *testing.T) {
	for _, r := range []*runtimeapi.LinuxContainerResources{
		{CpuQuota: -2}, {CpuPeriod: -1}, {CpuShares: -1}, {MemoryLimitInBytes: -1}, {MemoryLimitInBytes: 1000},
	} {
		if err := validateResources(r); !errdefs.IsInvalidArgument(err) {
			t.Errorf("%v: err %v", r, err)
		}
	}
	for _, r := range []*runtimeapi.LinuxContainerResources{nil, {}, {CpuQuota: -1}, {CpuQuota: 50000, CpuPeriod: 100000, MemoryLimitInBytes: 128 << 20}} {
		if err := validateResources(r); err != nil {
			t.Errorf("%v: %v", r, err)
		}
	}
}

func TestStopSignal(t *testing.T) {
	for sig, want := range map[runtimeapi.Signal]syscall.Signal{
		runtimeapi.Signal_SIGNAL_RUNTIME_DEFAULT: syscall.SIGTERM,
		runtimeapi.Signal_SIGNAL_SIGINT:          syscall.SIGINT,
		runtimeapi.Signal_SIGNAL_SIGQUIT:         syscall.SIGQUIT,
		runtimeapi.Signal_SIGNAL_SIGUSR1:         syscall.SIGUSR1,
	} {
		raw, _ := proto.Marshal(&runtimeapi.ContainerConfig{StopSignal: sig})
		got, err := stopSignal(store.Container{Config: raw})
		if err != nil || got != want {
			t.Errorf("%v: %v %v, want %v", sig, got, err, want)
		}
	}
}

func TestPodHostname(t *testing.T) {
	long := "a-very-long-pod-name-that-goes-on-and-on-and-on-beyond-the-limit-of-63"
	for _, tc := range []struct {
		cfg  *runtimeapi.PodSandboxConfig
		want string
	}{
		{&runtimeapi.PodSandboxConfig{Hostname: "web-0"}, "web-0"},
		{&runtimeapi.PodSandboxConfig{Metadata: &runtimeapi.PodSandboxMetadata{Name: "p"}}, "p"},
		{&runtimeapi.PodSandboxConfig{Hostname: long}, long[:63]},
	} {
		if got := podHostname(tc.cfg); got != tc.want || len(got) > 63 {
			t.Errorf("%v: %q", tc.cfg, got)
		}
	}
}

// TestKeyedLocks: one key's holders exclude each other, other keys do not
// wait, and the map does not grow.
func TestKeyedLocks(t *testing.T) {
	var k keyedLocks
	unlock := k.lock("a")
	other := make(chan struct{})
	go func() { k.lock("b")(); close(other) }()
	select {
	case <-other:
	case <-time.After(5 * time.Second):
		t.Fatal("another key waited")
	}
	var wg sync.WaitGroup
	got := make(chan struct{})
	wg.Add(1)
	go func() { defer wg.Done(); k.lock("a")(); close(got) }()
	select {
	case <-got:
		t.Fatal("the same key did not wait")
	case <-time.After(50 * time.Millisecond):
	}
	unlock()
	wg.Wait()
	if len(k.m) != 0 {
		t.Errorf("locks left: %v", k.m)
	}
}

func TestCapabilitiesOf(t *testing.T) {
	sc := func(priv bool, add, drop []string) *runtimeapi.LinuxContainerSecurityContext {
		return &runtimeapi.LinuxContainerSecurityContext{Privileged: priv, Capabilities: &runtimeapi.Capability{AddCapabilities: add, DropCapabilities: drop}}
	}
	caps, restrict := capabilitiesOf(nil)
	if !restrict || len(caps) != len(defaultCapabilities) {
		t.Errorf("default: %v %v", caps, restrict)
	}
	if _, restrict := capabilitiesOf(sc(true, nil, nil)); restrict {
		t.Error("privileged is restricted")
	}
	if _, restrict := capabilitiesOf(sc(false, []string{"ALL"}, nil)); restrict {
		t.Error("add ALL is restricted")
	}
	caps, _ = capabilitiesOf(sc(false, []string{"net_admin"}, []string{"NET_RAW", "CAP_KILL"}))
	if !slices.Contains(caps, "CAP_NET_ADMIN") || slices.Contains(caps, "CAP_NET_RAW") || slices.Contains(caps, "CAP_KILL") || !slices.Contains(caps, "CAP_CHOWN") {
		t.Errorf("add/drop: %v", caps)
	}
	caps, restrict = capabilitiesOf(sc(false, []string{"SYS_TIME"}, []string{"ALL"}))
	if !restrict || !slices.Equal(caps, []string{"CAP_SYS_TIME"}) {
		t.Errorf("drop ALL, add one: %v", caps)
	}
}

package cri

import (
	"reflect"
	"slices"
	"strings"
	"syscall"
	"testing"

	"github.com/containerd/errdefs"
	"google.golang.org/protobuf/proto"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/macvz/macvz/runtime/store"
	"github.com/macvz/macvz/vmimage"
)

// The CRI config decodes once into the controller's typed spec.
func TestSandboxSpec(t *testing.T) {
	cfg := &runtimeapi.PodSandboxConfig{
		Metadata: &runtimeapi.PodSandboxMetadata{Name: "web", Namespace: "ns", Uid: "u1"},
		Hostname: strings.Repeat("h", 70) + "-",
		PortMappings: []*runtimeapi.PortMapping{
			{HostPort: 8080, ContainerPort: 80},
			{HostPort: 5353, ContainerPort: 53, Protocol: runtimeapi.Protocol_UDP, HostIp: "127.0.0.1"},
		},
		DnsConfig: &runtimeapi.DNSConfig{Servers: []string{"10.0.0.10"}, Searches: []string{"ns.svc"}, Options: []string{"ndots:5"}},
		Linux: &runtimeapi.LinuxPodSandboxConfig{
			Sysctls:         map[string]string{"net.ipv4.ip_forward": "1"},
			Resources:       &runtimeapi.LinuxContainerResources{CpuQuota: 150000, CpuPeriod: 100000, MemoryLimitInBytes: 1 << 30},
			SecurityContext: &runtimeapi.LinuxSandboxSecurityContext{NamespaceOptions: &runtimeapi.NamespaceOption{Network: runtimeapi.NamespaceMode_NODE}},
		},
	}
	want := &store.SandboxSpec{
		Namespace: "ns", Name: "web", UID: "u1", Hostname: strings.Repeat("h", 63), HostNetwork: true,
		Ports:     []store.Port{{Protocol: "tcp", HostPort: 8080, ContainerPort: 80}, {Protocol: "udp", HostIP: "127.0.0.1", HostPort: 5353, ContainerPort: 53}},
		DNS:       &store.DNS{Servers: []string{"10.0.0.10"}, Searches: []string{"ns.svc"}, Options: []string{"ndots:5"}},
		Sysctls:   map[string]string{"net.ipv4.ip_forward": "1"},
		Resources: store.Resources{MilliCPU: 1500, MemoryBytes: 1 << 30},
	}
	if got := sandboxSpec(cfg); !reflect.DeepEqual(got, want) {
		t.Errorf("spec\n got %+v\nwant %+v", got, want)
	}
	bare := sandboxSpec(&runtimeapi.PodSandboxConfig{Metadata: &runtimeapi.PodSandboxMetadata{Name: "p"}})
	if bare.HostNetwork || bare.DNS != nil || bare.Hostname != "p" || bare.Resources != (store.Resources{}) {
		t.Errorf("bare pod: %+v", bare)
	}
}

func TestResourcesOf(t *testing.T) {
	for _, tc := range []struct {
		r    *runtimeapi.LinuxContainerResources
		want store.Resources
	}{
		{nil, store.Resources{}},
		{&runtimeapi.LinuxContainerResources{CpuQuota: 50000, CpuPeriod: 100000, MemoryLimitInBytes: 300 << 20}, store.Resources{MilliCPU: 500, MemoryBytes: 300 << 20}},
		{&runtimeapi.LinuxContainerResources{CpuShares: 1024}, store.Resources{MilliCPU: 1000}},
		{&runtimeapi.LinuxContainerResources{CpuShares: 2}, store.Resources{}}, // kubelet's "no request"
	} {
		if got := resourcesOf(tc.r); got != tc.want {
			t.Errorf("%v: %+v, want %+v", tc.r, got, tc.want)
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
		{CpuQuota: -2}, {CpuPeriod: -1}, {CpuPeriod: 999}, {CpuPeriod: 1_000_001}, {CpuShares: -1}, {MemoryLimitInBytes: -1}, {MemoryLimitInBytes: 1000},
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

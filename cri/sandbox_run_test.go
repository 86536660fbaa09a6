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

	"github.com/macvz/macvz/cri/config"
	"github.com/macvz/macvz/runtime/store"
	"github.com/macvz/macvz/runtime/vm"
)

func annotatedPod(image string) *runtimeapi.PodSandboxConfig {
	return &runtimeapi.PodSandboxConfig{
		Metadata:    &runtimeapi.PodSandboxMetadata{Name: "p", Namespace: "ns", Uid: "u"},
		Annotations: map[string]string{annotationVMImage: image},
	}
}

func TestHandlerImageAnnotation(t *testing.T) {
	s := newTestService(t)
	s.cfg.RuntimeHandlers = map[string]config.RuntimeHandler{
		"trusted": {VMImage: "example.com/h:1", AllowVMImageAnnotation: true},
		"plain":   {VMImage: "example.com/h:1"},
	}
	for _, tc := range []struct {
		handler, annotation, want string
		denied                    bool
	}{
		{"", "", "", false},
		{"", "example.com/x:1", "", true},
		{"macvz", "example.com/x:1", "", true},
		{"plain", "", "example.com/h:1", false},
		{"plain", "example.com/x:1", "", true},
		{"trusted", "example.com/x:1", "example.com/x:1", false},
		{"trusted", "", "example.com/h:1", false},
	} {
		got, err := imageOf(s, tc.handler, annotatedPod(tc.annotation))
		if tc.denied {
			if !errdefs.IsFailedPrecondition(err) || !strings.Contains(err.Error(), "allow_vm_image_annotation") {
				t.Errorf("handler %q, annotation %q: %q, %v; want FailedPrecondition naming allow_vm_image_annotation", tc.handler, tc.annotation, got, err)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("handler %q, annotation %q: %q, %v; want %q", tc.handler, tc.annotation, got, err, tc.want)
		}
	}
	// The default handler, once allowed.
	s.cfg.RuntimeHandlers[config.DefaultHandler] = config.RuntimeHandler{AllowVMImageAnnotation: true}
	for _, h := range []string{"", "macvz"} {
		if got, err := imageOf(s, h, annotatedPod("example.com/x:1")); err != nil || got != "example.com/x:1" {
			t.Errorf("allowed default handler %q: %q, %v", h, got, err)
		}
	}
	if _, err := imageOf(s, "nope", annotatedPod("")); !errdefs.IsNotFound(err) || strings.Count(err.Error(), "macvz") != 1 {
		t.Errorf("unknown handler: %v", err)
	}
}

// imageOf is the VM image a sandbox of handler boots at RunPodSandbox.
func imageOf(s *Service, handler string, cfg *runtimeapi.PodSandboxConfig) (string, error) {
	h, err := s.handler(handler)
	if err != nil {
		return "", err
	}
	return handlerImage(h, cfg)
}

// TestAgentless: the handler's agent setting and the pod's annotation
// (which can only turn the agent off) decide whether a VM runs without
// one; anything else is InvalidArgument naming the annotation.
func TestAgentless(t *testing.T) {
	none := config.RuntimeHandler{Agent: config.AgentNone}
	for _, tc := range []struct {
		h          config.RuntimeHandler
		annotation string
		want, bad  bool
	}{
		{config.RuntimeHandler{}, "", false, false},
		{config.RuntimeHandler{}, "none", true, false},
		{config.RuntimeHandler{}, "required", false, false},
		{none, "", true, false},
		{none, "required", true, false}, // a pod cannot ask an agentless image for an agent
		{none, "none", true, false},
		{config.RuntimeHandler{}, "None", false, true},
		{config.RuntimeHandler{}, "off", false, true},
	} {
		cfg := &runtimeapi.PodSandboxConfig{Annotations: map[string]string{}}
		if tc.annotation != "" {
			cfg.Annotations[annotationAgent] = tc.annotation
		}
		got, err := agentless(tc.h, cfg)
		if tc.bad {
			if !errdefs.IsInvalidArgument(err) || !strings.Contains(err.Error(), annotationAgent) {
				t.Errorf("handler agent %q, annotation %q: %v, %v; want InvalidArgument naming %s", tc.h.Agent, tc.annotation, got, err, annotationAgent)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("handler agent %q, annotation %q: %v, %v; want %v", tc.h.Agent, tc.annotation, got, err, tc.want)
		}
	}
}

// TestRunPodSandboxAnnotationDenied: a denied annotation fails before
// anything is made (no record, no state directory, no network).
func TestRunPodSandboxAnnotationDenied(t *testing.T) {
	s := newTestService(t)
	_, err := s.RunPodSandbox(context.Background(), &runtimeapi.RunPodSandboxRequest{Config: annotatedPod("example.com/x:1")})
	if !errdefs.IsFailedPrecondition(err) || !strings.Contains(err.Error(), "[runtime_handlers.macvz]") {
		t.Fatalf("RunPodSandbox: %v, want FailedPrecondition naming the config key", err)
	}
	if sbs, err := s.st.Sandboxes(nil); err != nil || len(sbs) != 0 {
		t.Errorf("sandboxes after the refusal: %v, %v", sbs, err)
	}
	if ents, _ := os.ReadDir(filepath.Join(s.cfg.State, "sandboxes")); len(ents) != 0 {
		t.Errorf("sandbox directories after the refusal: %v", ents)
	}
}

// TestRunPodSandboxBootsHandlerImage: a handler with a VM image boots it
// at once, sized by the pod's resources, and the guest gets the pod's
// hostname, DNS and sysctls.
func TestRunPodSandboxBootsHandlerImage(t *testing.T) {
	f := newFake(t)
	pod := hostPod(t, "web")
	id := f.runPod(t, pod, "guest")

	spawns := f.shims.Spawned()
	if len(spawns) != 1 {
		t.Fatalf("%d shims spawned, want 1", len(spawns))
	}
	o := spawns[0]
	img, _ := f.images.VMImage(context.Background(), guestRef)
	spec := o.Spec
	if o.Dir != f.ctl.Dir(id) || spec.ID != id || spec.CPUs != min(2, runtime.NumCPU()) || spec.MemoryBytes != 320<<20 {
		t.Errorf("spawn: dir %s id %s, %d CPUs, %d bytes; want %s, 1.5 CPU rounded up, 320 MiB", o.Dir, spec.ID, spec.CPUs, spec.MemoryBytes, f.ctl.Dir(id))
	}
	if spec.Boot.Kind != vm.BootLinux || spec.Boot.Kernel != filepath.Join(img.BaseDir, "vmlinux") || spec.Boot.Cmdline != "console=ttyS0" || len(spec.Disks) != 0 {
		t.Errorf("boot %+v disks %+v", spec.Boot, spec.Disks)
	}
	if len(spec.NICs) != 1 || spec.NICs[0].Kind != vm.NICUser {
		t.Errorf("a host-network pod's NICs: %+v", spec.NICs)
	}
	sh := f.shimOf(t, id)
	if sh == nil || sh.Calls().Starts != 1 {
		t.Fatalf("shim of the pod: %v", sh)
	}
	a := sh.Guest.Setup()
	if !slices.Equal(a.Hostnames, []string{"web-host"}) {
		t.Errorf("guest hostname: %v", a.Hostnames)
	}
	if len(a.Resolv) != 1 || !slices.Equal(a.Resolv[0].GetNameservers(), []string{"10.0.0.10"}) || !slices.Equal(a.Resolv[0].GetSearches(), []string{"ns.svc"}) {
		t.Errorf("guest resolv.conf: %v", a.Resolv)
	}
	if len(a.Sysctls) != 1 || a.Sysctls[0]["net.ipv4.ping_group_range"] != "0 1" {
		t.Errorf("guest sysctls: %v", a.Sysctls)
	}
	sb, err := f.st.Sandbox(id)
	if err != nil {
		t.Fatal(err)
	}
	if sb.State != store.SandboxReady || !sb.VMStarted || sb.Creating || sb.VMImage != img.Image.ID() || sb.Handler != "guest" || sb.Name != "web_ns_uid-web_0" {
		t.Errorf("record: %+v", sb)
	}
}

// TestRunPodSandboxWithoutImage: a pod whose handler names no image is
// recorded Ready; its VM waits for its first container.
func TestRunPodSandboxWithoutImage(t *testing.T) {
	f := newFake(t)
	id := f.runPod(t, hostPod(t, "web"), "")
	if n := len(f.shims.Spawned()); n != 0 {
		t.Errorf("%d shims spawned before any container", n)
	}
	sb, err := f.st.Sandbox(id)
	if err != nil || sb.State != store.SandboxReady || sb.VMStarted || sb.VMImage != "" {
		t.Errorf("record: %+v, %v", sb, err)
	}
	if _, err := os.Stat(f.ctl.Dir(id)); err != nil {
		t.Errorf("state directory: %v", err)
	}
}

// TestRunPodSandboxRefusals: bad input and failed boots answer with the
// code of their cause and leave nothing: no record, no directory, no shim.
func TestRunPodSandboxRefusals(t *testing.T) {
	f := newFake(t, func(c *config.Config) {
		c.RuntimeHandlers["absent"] = config.RuntimeHandler{VMImage: "example.com/absent:1"}
	})
	ctx := context.Background()
	pod := func(change func(*runtimeapi.PodSandboxConfig)) *runtimeapi.PodSandboxConfig {
		p := hostPod(t, "p")
		change(p)
		return p
	}
	for _, tc := range []struct {
		name    string
		pod     *runtimeapi.PodSandboxConfig
		handler string
		boot    error // the shim's Start fails with it
		want    codes.Code
	}{
		{"no metadata", pod(func(p *runtimeapi.PodSandboxConfig) { p.Metadata = nil }), "", nil, codes.InvalidArgument},
		{"no uid", pod(func(p *runtimeapi.PodSandboxConfig) { p.Metadata.Uid = "" }), "", nil, codes.InvalidArgument},
		{"negative memory", pod(func(p *runtimeapi.PodSandboxConfig) { p.Linux.Resources.MemoryLimitInBytes = -1 }), "", nil, codes.InvalidArgument},
		{"unknown handler", pod(func(*runtimeapi.PodSandboxConfig) {}), "nope", nil, codes.NotFound},
		{"handler image not pulled", pod(func(*runtimeapi.PodSandboxConfig) {}), "absent", nil, codes.NotFound},
		{"annotation not allowed", pod(func(p *runtimeapi.PodSandboxConfig) { p.Annotations = map[string]string{annotationVMImage: guestRef} }), "guest", nil, codes.FailedPrecondition},
		{"pod network not ready", pod(func(p *runtimeapi.PodSandboxConfig) { p.Linux.SecurityContext = nil }), "", nil, codes.FailedPrecondition},
		{"boot fails", pod(func(*runtimeapi.PodSandboxConfig) {}), "guest", fmt.Errorf("the hypervisor is gone: %w", errdefs.ErrUnavailable), codes.Unavailable},
	} {
		if tc.boot != nil {
			f.shims.FailNextStart(tc.boot)
		}
		_, err := f.RunPodSandbox(ctx, &runtimeapi.RunPodSandboxRequest{Config: tc.pod, RuntimeHandler: tc.handler})
		if got := grpcCode(err); got != tc.want {
			t.Errorf("%s: code %v (%v), want %v", tc.name, got, err, tc.want)
		}
		f.noSandboxLeft(t, tc.name)
	}
	// The failed boot got as far as a shim, which was killed.
	if n := len(f.shims.Spawned()); n != 1 || len(f.shims.Killed()) == 0 {
		t.Errorf("failed boot: %d spawns, killed %v", n, f.shims.Killed())
	}
}

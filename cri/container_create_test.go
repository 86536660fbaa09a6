package cri

import (
	"context"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containerd/errdefs"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/proto"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/macvz/macvz/runtime/store"
)

func TestContainerLogPath(t *testing.T) {
	for _, tc := range []struct {
		dir, path, want string
		ok              bool
	}{
		{"/var/log/pods/ns_p_u", "nginx/0.log", "/var/log/pods/ns_p_u/nginx/0.log", true},
		{"/var/log/pods/ns_p_u/", "./c/../c.log", "/var/log/pods/ns_p_u/c.log", true},
		{"/any", "", "", true}, // no log
		{"", "", "", true},
		{"/var/log/pods/ns_p_u", "../../etc/cron.d/x", "", false},
		{"/var/log/pods/ns_p_u", "a/../../x.log", "", false},
		{"/var/log/pods/ns_p_u", "..", "", false},
		{"/var/log/pods/ns_p_u", ".", "", false},
		{"/var/log/pods/ns_p_u", "/etc/cron.d/x", "", false},
		{"", "c.log", "", false},
		{"relative/dir", "c.log", "", false},
	} {
		got, err := containerLogPath(tc.dir, tc.path)
		if tc.ok != (err == nil) || got != tc.want {
			t.Errorf("containerLogPath(%q, %q) = %q, %v", tc.dir, tc.path, got, err)
		}
		if err != nil && !errdefs.IsInvalidArgument(err) {
			t.Errorf("containerLogPath(%q, %q): %v is not InvalidArgument", tc.dir, tc.path, err)
		}
	}
}

// TestCreateContainerLogPathEscape: a log_path leaving the pod's log
// directory is refused before anything is recorded.
func TestCreateContainerLogPathEscape(t *testing.T) {
	s := newTestService(t)
	pod := &runtimeapi.PodSandboxConfig{
		Metadata:     &runtimeapi.PodSandboxMetadata{Name: "p", Namespace: "ns", Uid: "u"},
		LogDirectory: t.TempDir(),
	}
	raw, err := proto.Marshal(pod)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.st.CreateSandbox(&store.Sandbox{ID: "sb1", Name: "p", Config: raw, State: store.SandboxReady}); err != nil {
		t.Fatal(err)
	}
	for _, lp := range []string{"../../etc/cron.d/x", "/etc/cron.d/x"} {
		_, err = s.CreateContainer(context.Background(), &runtimeapi.CreateContainerRequest{
			PodSandboxId: "sb1",
			Config: &runtimeapi.ContainerConfig{
				Metadata: &runtimeapi.ContainerMetadata{Name: "c"},
				Image:    &runtimeapi.ImageSpec{Image: "example.com/guest:1"},
				LogPath:  lp,
			},
			SandboxConfig: pod,
		})
		if !errdefs.IsInvalidArgument(err) {
			t.Errorf("log_path %q: %v, want InvalidArgument", lp, err)
		} else if !strings.Contains(err.Error(), "log_path") || !strings.Contains(err.Error(), lp) {
			t.Errorf("log_path %q: message %q does not name the field and value", lp, err)
		}
	}
	cs, err := s.st.Containers(nil)
	if err != nil || len(cs) != 0 {
		t.Errorf("containers after the refusals: %v, %v", cs, err)
	}
}

// TestCreateContainer: a container is recorded Created with its image's
// ID and log path, and the pod's first one decides its VM image.
func TestCreateContainer(t *testing.T) {
	f := newFake(t)
	pod := hostPod(t, "web")
	sbID := f.runPod(t, pod, "")
	id := f.createCtr(t, sbID, pod, &runtimeapi.ContainerConfig{Metadata: &runtimeapi.ContainerMetadata{Name: "app"}, LogPath: "app.log"})
	img, _ := f.images.VMImage(context.Background(), guestRef)
	c, err := f.st.Container(id)
	if err != nil || c.State != store.ContainerCreated || c.SandboxID != sbID || c.ImageID != img.Image.ID() || c.ImageRef != guestRef ||
		c.IsVM || c.Name != "app_web_ns_uid-web_0" || c.LogPath != filepath.Join(pod.GetLogDirectory(), "app.log") {
		t.Errorf("record: %+v, %v", c, err)
	}
	if sb, _ := f.st.Sandbox(sbID); sb.VMImage != img.Image.ID() || sb.VMContent != img.Content || sb.VMStarted {
		t.Errorf("sandbox after its first container: %+v", sb)
	}
	if n := len(f.shims.Spawned()); n != 0 {
		t.Errorf("%d VMs booted at creation", n)
	}
}

// TestCreateContainerRefusals: bad input is refused with its code and
// records nothing, nor changes the pod's VM image.
func TestCreateContainerRefusals(t *testing.T) {
	f := newFake(t)
	ctx := context.Background()
	f.images.addOther("example.com/other:1", guestProcess)
	pod := hostPod(t, "web")
	sbID := f.runPod(t, pod, "guest")
	md := &runtimeapi.ContainerMetadata{Name: "c"}
	img := &runtimeapi.ImageSpec{Image: guestRef}
	for _, tc := range []struct {
		name string
		sb   string
		cfg  *runtimeapi.ContainerConfig
		want codes.Code
	}{
		{"no name", sbID, &runtimeapi.ContainerConfig{Image: img}, codes.InvalidArgument},
		{"no image", sbID, &runtimeapi.ContainerConfig{Metadata: md}, codes.InvalidArgument},
		{"relative container path", sbID, &runtimeapi.ContainerConfig{Metadata: md, Image: img, Mounts: []*runtimeapi.Mount{{ContainerPath: "data", HostPath: t.TempDir()}}}, codes.InvalidArgument},
		{"absent host path", sbID, &runtimeapi.ContainerConfig{Metadata: md, Image: img, Mounts: []*runtimeapi.Mount{{ContainerPath: "/data", HostPath: "/nonexistent/macvz"}}}, codes.NotFound},
		{"negative CPU shares", sbID, &runtimeapi.ContainerConfig{Metadata: md, Image: img, Linux: &runtimeapi.LinuxContainerConfig{Resources: &runtimeapi.LinuxContainerResources{CpuShares: -1}}}, codes.InvalidArgument},
		{"group without user", sbID, &runtimeapi.ContainerConfig{Metadata: md, Image: img, Linux: &runtimeapi.LinuxContainerConfig{SecurityContext: &runtimeapi.LinuxContainerSecurityContext{RunAsGroup: &runtimeapi.Int64Value{Value: 5}}}}, codes.InvalidArgument},
		{"unknown pod", "nope", &runtimeapi.ContainerConfig{Metadata: md, Image: img}, codes.NotFound},
		{"image not pulled", sbID, &runtimeapi.ContainerConfig{Metadata: md, Image: &runtimeapi.ImageSpec{Image: "example.com/absent:1"}}, codes.NotFound},
		{"another VM image", sbID, &runtimeapi.ContainerConfig{Metadata: md, Image: &runtimeapi.ImageSpec{Image: "example.com/other:1"}}, codes.FailedPrecondition},
	} {
		_, err := f.CreateContainer(ctx, &runtimeapi.CreateContainerRequest{PodSandboxId: tc.sb, Config: tc.cfg, SandboxConfig: pod})
		if got := grpcCode(err); got != tc.want {
			t.Errorf("%s: code %v (%v), want %v", tc.name, got, err, tc.want)
		}
	}
	if cs, err := f.st.Containers(nil); err != nil || len(cs) != 0 {
		t.Errorf("containers after the refusals: %v, %v", cs, err)
	}
	want, _ := f.images.VMImage(ctx, guestRef)
	if sb, _ := f.st.Sandbox(sbID); sb.VMImage != want.Image.ID() {
		t.Errorf("the pod's VM image changed to %s", sb.VMImage)
	}
}

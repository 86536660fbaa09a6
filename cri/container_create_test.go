package cri

import (
	"context"
	"strings"
	"testing"

	"github.com/containerd/errdefs"
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

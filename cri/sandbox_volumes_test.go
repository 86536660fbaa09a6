package cri

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containerd/errdefs"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/macvz/macvz/cri/config"
	"github.com/macvz/macvz/runtime/sandbox"
)

// TestVolumeDirsAnnotation: macvz.io/volume-dirs is refused unless the
// handler allows it (FailedPrecondition naming the key), must be a JSON
// array of absolute, clean paths of real directories (InvalidArgument),
// and reaches the sandbox's spec; a refusal leaves nothing.
func TestVolumeDirsAnnotation(t *testing.T) {
	s := newTestService(t)
	dir := t.TempDir()
	link := filepath.Join(t.TempDir(), "link")
	if err := os.Symlink(dir, link); err != nil {
		t.Fatal(err)
	}
	pod := func(a string) *runtimeapi.PodSandboxConfig {
		return &runtimeapi.PodSandboxConfig{
			Metadata:    &runtimeapi.PodSandboxMetadata{Name: "p", Namespace: "ns", Uid: "u1"},
			Annotations: map[string]string{sandbox.AnnotationVolumeDirs: a},
		}
	}
	ok := `["` + dir + `"]`
	if err := s.checkVolumeDirs("", pod(ok)); !errdefs.IsFailedPrecondition(err) || !strings.Contains(err.Error(), "allow_volume_dirs_annotation = true under [runtime_handlers.macvz]") {
		t.Errorf("not allowed: %v", err)
	}
	_, err := s.RunPodSandbox(context.Background(), &runtimeapi.RunPodSandboxRequest{Config: pod(ok)})
	if !errdefs.IsFailedPrecondition(err) {
		t.Errorf("RunPodSandbox: %v", err)
	}
	if sbs, err := s.st.Sandboxes(nil); err != nil || len(sbs) != 0 {
		t.Errorf("sandboxes after the refusal: %v, %v", sbs, err)
	}

	s.cfg.RuntimeHandlers[config.DefaultHandler] = config.RuntimeHandler{AllowVolumeDirsAnnotation: true}
	if err := s.checkVolumeDirs("macvz", pod(ok)); err != nil {
		t.Errorf("allowed: %v", err)
	}
	if err := s.checkVolumeDirs("", &runtimeapi.PodSandboxConfig{}); err != nil {
		t.Errorf("no annotation: %v", err)
	}
	for _, a := range []string{dir, `{"a":1}`, `["rel"]`, `["` + dir + `/../x"]`, `["/nonexistent"]`, `["` + link + `"]`} {
		if err := s.checkVolumeDirs("", pod(a)); !errdefs.IsInvalidArgument(err) {
			t.Errorf("%q: %v", a, err)
		}
	}
	if got := sandboxSpec(pod(ok)).VolumeDirs; len(got) != 1 || got[0] != dir {
		t.Errorf("spec's volume dirs %v", got)
	}
}

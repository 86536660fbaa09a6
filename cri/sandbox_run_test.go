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
		got, err := s.handlerImage(tc.handler, annotatedPod(tc.annotation))
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
		if got, err := s.handlerImage(h, annotatedPod("example.com/x:1")); err != nil || got != "example.com/x:1" {
			t.Errorf("allowed default handler %q: %q, %v", h, got, err)
		}
	}
	if _, err := s.handlerImage("nope", annotatedPod("")); !errdefs.IsNotFound(err) || strings.Count(err.Error(), "macvz") != 1 {
		t.Errorf("unknown handler: %v", err)
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

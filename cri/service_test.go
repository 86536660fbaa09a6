package cri

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containerd/errdefs"
	"github.com/containerd/errdefs/pkg/errgrpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/macvz/macvz/cri/config"
)

func newTestService(t *testing.T) *Service {
	t.Helper()
	cfg := config.Default()
	dir := t.TempDir()
	cfg.Root, cfg.State, cfg.Socket = filepath.Join(dir, "root"), filepath.Join(dir, "state"), filepath.Join(dir, "s.sock")
	s, err := NewService(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func TestRemoveAbsentImageSucceeds(t *testing.T) {
	s := newTestService(t)
	ctx := context.Background()
	for _, ref := range []string{"example.com/none:1", "sha256:0123456789012345678901234567890123456789012345678901234567890123"} {
		for range 2 {
			if _, err := s.RemoveImage(ctx, &runtimeapi.RemoveImageRequest{Image: &runtimeapi.ImageSpec{Image: ref}}); err != nil {
				t.Fatalf("RemoveImage(%s): %v", ref, err)
			}
		}
	}
}

func TestImageStatusOfUnknownImageIsEmpty(t *testing.T) {
	s := newTestService(t)
	resp, err := s.ImageStatus(context.Background(), &runtimeapi.ImageStatusRequest{Image: &runtimeapi.ImageSpec{Image: "example.com/none:1"}})
	if err != nil || resp.GetImage() != nil {
		t.Fatalf("ImageStatus = %v, %v; want empty answer", resp, err)
	}
}

func TestPullMalformedReferenceIsInvalidArgument(t *testing.T) {
	s := newTestService(t)
	_, err := s.PullImage(context.Background(), &runtimeapi.PullImageRequest{Image: &runtimeapi.ImageSpec{Image: "UPPER//case"}})
	if got := status.Code(errgrpc.ToGRPC(err)); got != codes.InvalidArgument {
		t.Fatalf("code %v (%v), want InvalidArgument", got, err)
	}
}

func TestErrorClassesMapToCodes(t *testing.T) {
	for cls, want := range map[error]codes.Code{
		errdefs.ErrInvalidArgument:    codes.InvalidArgument,
		errdefs.ErrNotFound:           codes.NotFound,
		errdefs.ErrFailedPrecondition: codes.FailedPrecondition,
		errdefs.ErrUnavailable:        codes.Unavailable,
		errdefs.ErrUnauthenticated:    codes.Unauthenticated,
		errdefs.ErrDataLoss:           codes.DataLoss,
	} {
		err := errgrpc.ToGRPC(wrap(cls))
		if status.Code(err) != want {
			t.Errorf("%v → %v, want %v", cls, status.Code(err), want)
		}
		if status.Convert(err).Message() != wrap(cls).Error() {
			t.Errorf("message %q lost its context", status.Convert(err).Message())
		}
	}
}

func wrap(err error) error { return &wrapped{err} }

type wrapped struct{ err error }

func (w *wrapped) Error() string { return "pulling example.com/x: " + w.err.Error() }
func (w *wrapped) Unwrap() error { return w.err }

// nilUnwrap wraps nothing: errgrpc.ToGRPC panics on it inside a join.
type nilUnwrap struct{}

func (nilUnwrap) Error() string { return "odd" }
func (nilUnwrap) Unwrap() error { return nil }

func TestToGRPCNeverPanics(t *testing.T) {
	err := errors.Join(fmt.Errorf("registry: %w", errdefs.ErrNotFound), nilUnwrap{})
	st, ok := status.FromError(toGRPC(err))
	if !ok || st.Code() != codes.NotFound || !strings.Contains(st.Message(), "odd") {
		t.Errorf("got %v", st)
	}
}

// The vz backend refuses to start where it cannot run (here: not macOS;
// on a Mac: a shim binary without the virtualization entitlement).
func TestVZBackendRefusedHere(t *testing.T) {
	cfg := config.Default()
	dir := t.TempDir()
	cfg.Root, cfg.State, cfg.Socket = filepath.Join(dir, "root"), filepath.Join(dir, "state"), filepath.Join(dir, "s.sock")
	cfg.Backend = "vz"
	_, err := NewService(context.Background(), cfg)
	if !errdefs.IsFailedPrecondition(err) || !strings.Contains(err.Error(), "only on macOS") {
		t.Errorf("NewService with backend vz on linux: %v", err)
	}
}

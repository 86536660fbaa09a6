package imagestore_test

import (
	"context"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"

	"github.com/macvz/macvz/integration/testimage"
	"github.com/macvz/macvz/integration/testregistry"
	"github.com/macvz/macvz/vmimage"
	"github.com/macvz/macvz/vmimage/imagestore"
)

// TestVMImage: a pulled VM image is handed out with its descriptor, its
// base and the base's directory, under any of its names; anything that
// cannot boot is refused with the class CRI reports.
func TestVMImage(t *testing.T) {
	ctx := context.Background()
	reg := testregistry.Start(t, testregistry.Options{})
	vm, err := testimage.Tart(testimage.TartOptions{Seed: 41, DiskSize: 2 << 20, ChunkSize: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	oci, err := testimage.OCI(testimage.OCIOptions{Seed: 42})
	if err != nil {
		t.Fatal(err)
	}
	push(t, reg, "vm", "v1", vm)
	push(t, reg, "app", "v1", oci)
	s := newStore(t, insecure(reg.Host()))
	rec := mustPull(t, s, reg.Ref("vm", "v1"), nil)
	byDigest := mustPull(t, s, reg.Host()+"/vm@"+vm.Manifest.Digest.String(), nil)
	mustPull(t, s, reg.Ref("app", "v1"), nil)

	var layers strings.Builder
	for _, l := range vm.Parsed().Layers {
		layers.WriteString(l.Digest.String() + "\n")
	}
	wantContent := digest.FromString(layers.String()).String()

	var first *vmimage.Descriptor
	for _, ref := range []string{reg.Ref("vm", "v1"), byDigest.Name, rec.ID()} {
		got, err := s.VMImage(ctx, ref)
		if err != nil {
			t.Fatalf("VMImage(%s): %v", ref, err)
		}
		if got.Image.ID() != rec.ID() || got.Image.Kind != vmimage.KindTart {
			t.Errorf("VMImage(%s): record %+v, want image %s", ref, got.Image, rec.ID())
		}
		if got.Base != imagestore.BaseName(rec.Manifest.Digest) {
			t.Errorf("VMImage(%s): base %q", ref, got.Base)
		}
		want, err := vmimage.ReadDescriptor(got.BaseDir)
		if err != nil {
			t.Fatalf("VMImage(%s): the base directory %s: %v", ref, got.BaseDir, err)
		}
		if got.Descriptor == nil || !reflect.DeepEqual(*got.Descriptor, *want) || want.OS != "darwin" {
			t.Errorf("VMImage(%s): descriptor %+v, want %+v", ref, got.Descriptor, want)
		}
		if got.Content != wantContent {
			t.Errorf("VMImage(%s): content %s, want %s", ref, got.Content, wantContent)
		}
		if _, err := os.Stat(filepath.Join(got.BaseDir, want.Disk)); want.Disk == "" || err != nil {
			t.Errorf("VMImage(%s): the disk %q in the base: %v", ref, want.Disk, err)
		}
		// One manifest, one read of its descriptor.
		if first == nil {
			first = got.Descriptor
		} else if got.Descriptor != first {
			t.Errorf("VMImage(%s) read the descriptor again", ref)
		}
	}

	_, err = s.VMImage(ctx, reg.Ref("vm", "missing"))
	wantClass(t, err, "NotFound", errdefs.IsNotFound, "vm:missing", "pull it first")
	_, err = s.VMImage(ctx, digest.FromString("nothing").String())
	wantClass(t, err, "NotFound", errdefs.IsNotFound)

	_, err = s.VMImage(ctx, reg.Ref("app", "v1"))
	wantClass(t, err, "FailedPrecondition", errdefs.IsFailedPrecondition, "ordinary container image")

	// A VM image whose base went missing cannot boot until pulled again.
	if err := s.sn.Remove(ctx, imagestore.BaseName(rec.Manifest.Digest)); err != nil {
		t.Fatal(err)
	}
	_, err = s.VMImage(ctx, reg.Ref("vm", "v1"))
	wantClass(t, err, "FailedPrecondition", errdefs.IsFailedPrecondition, "no unpacked VM base")
	mustPull(t, s, reg.Ref("vm", "v1"), nil)
	if _, err := s.VMImage(ctx, reg.Ref("vm", "v1")); err != nil {
		t.Fatalf("VMImage after pulling again: %v", err)
	}
}

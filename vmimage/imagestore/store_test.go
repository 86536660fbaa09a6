package imagestore_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
	specs "github.com/opencontainers/image-spec/specs-go"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/macvz/macvz/integration/testimage"
	"github.com/macvz/macvz/integration/testregistry"
	"github.com/macvz/macvz/snapshotter"
	"github.com/macvz/macvz/vmimage"
	"github.com/macvz/macvz/vmimage/imagestore"
)

// ---- helpers shared by the tests of this package ----

// insecure allows plain HTTP to each host (the test registry serves no TLS).
func insecure(hosts ...string) map[string]imagestore.Host {
	r := map[string]imagestore.Host{}
	for _, h := range hosts {
		r[h] = imagestore.Host{Insecure: true}
	}
	return r
}

type testStore struct {
	*imagestore.Store
	sn   *snapshotter.Snapshotter
	root string
}

// newStore opens a store in a fresh directory; edit adjusts its options.
func newStore(t testing.TB, hosts map[string]imagestore.Host, edit ...func(*imagestore.Options)) *testStore {
	t.Helper()
	root := t.TempDir()
	sn, err := snapshotter.New(filepath.Join(root, "snapshots"))
	if err != nil {
		t.Fatal(err)
	}
	opts := imagestore.Options{
		Root:                   filepath.Join(root, "images"),
		Snapshotter:            sn,
		Hosts:                  hosts,
		MaxConcurrentDownloads: 4,
	}
	for _, e := range edit {
		e(&opts)
	}
	s, err := imagestore.Open(context.Background(), opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		s.Close()
		sn.Close()
	})
	return &testStore{Store: s, sn: sn, root: root}
}

func push(t testing.TB, reg *testregistry.Registry, repo, tag string, img testimage.Image) {
	t.Helper()
	if err := reg.Push(context.Background(), repo, tag, img); err != nil {
		t.Fatal(err)
	}
}

func mustPull(t testing.TB, s *testStore, ref string, auth *imagestore.Auth) imagestore.Image {
	t.Helper()
	img, err := s.Pull(context.Background(), ref, auth)
	if err != nil {
		t.Fatalf("pull %s: %v", ref, err)
	}
	s.WaitReleases()
	return img
}

// wantClass fails t unless err is of the errdefs class is checks.
func wantClass(t testing.TB, err error, class string, is func(error) bool, mentions ...string) {
	t.Helper()
	if err == nil {
		t.Fatalf("got no error, want %s", class)
	}
	if !is(err) {
		t.Fatalf("error is not %s: %v", class, err)
	}
	for _, m := range mentions {
		if !strings.Contains(err.Error(), m) {
			t.Errorf("error does not mention %q: %v", m, err)
		}
	}
}

// blobs is every digest committed in the store's content store.
func blobs(t testing.TB, s *testStore) map[digest.Digest]bool {
	t.Helper()
	out := map[digest.Digest]bool{}
	if err := s.Content().Walk(context.Background(), func(i content.Info) error {
		out[i.Digest] = true
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return out
}

// ingests is every unfinished download in the content store.
func ingests(t testing.TB, s *testStore) []content.Status {
	t.Helper()
	st, err := s.Content().ListStatuses(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// imageDigests is the manifest and every blob of a test image.
func imageDigests(img testimage.Image) []digest.Digest {
	ds := []digest.Digest{img.Manifest.Digest}
	for _, b := range img.Blobs {
		ds = append(ds, b.Desc.Digest)
	}
	return ds
}

// snaps is every snapshot, by name.
func snaps(t testing.TB, s *testStore) map[string]snapshots.Info {
	t.Helper()
	out := map[string]snapshots.Info{}
	err := s.sn.Walk(context.Background(), func(_ context.Context, i snapshots.Info) error {
		out[i.Name] = i
		return nil
	})
	// A snapshotter that never held a snapshot has no bucket to walk.
	if err != nil && !errdefs.IsNotFound(err) {
		t.Fatal(err)
	}
	return out
}

// assertEmpty checks that a failed pull left nothing behind: no record,
// no blob of img, no download in progress and no snapshot.
func assertEmpty(t testing.TB, s *testStore, img testimage.Image) {
	t.Helper()
	list, err := s.List(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if len(list) != 0 {
		t.Errorf("images listed after a failed pull: %v", names(list))
	}
	have := blobs(t, s)
	for _, d := range imageDigests(img) {
		if have[d] {
			t.Errorf("content store still holds %s of the failed image", d)
		}
	}
	if len(have) != 0 {
		t.Errorf("content store holds %d blobs after a failed pull", len(have))
	}
	if st := ingests(t, s); len(st) != 0 {
		t.Errorf("content store holds ingests after a failed pull: %+v", st)
	}
	if sn := snaps(t, s); len(sn) != 0 {
		t.Errorf("snapshots left after a failed pull: %v", sn)
	}
}

func names(imgs []imagestore.Image) []string {
	var out []string
	for _, i := range imgs {
		out = append(out, i.Name)
	}
	sort.Strings(out)
	return out
}

func randomBytes(seed uint64, n int) []byte {
	r := rand.New(rand.NewPCG(seed, 99))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

func blobOf(t testing.TB, img testimage.Image, mediaType string) testimage.Blob {
	t.Helper()
	for _, b := range img.Blobs {
		if b.Desc.MediaType == mediaType {
			return b
		}
	}
	t.Fatalf("test image has no %s blob", mediaType)
	return testimage.Blob{}
}

// ---- ordinary OCI images ----

func TestPullOCI(t *testing.T) {
	ctx := context.Background()
	reg := testregistry.Start(t, testregistry.Options{})
	img, err := testimage.OCI(testimage.OCIOptions{
		Seed:       1,
		Entrypoint: []string{"/bin/app"},
		Cmd:        []string{"--flag"},
		Env:        []string{"A=b"},
		WorkingDir: "/work",
		User:       "1000",
		Layers: [][]testimage.File{
			{{Path: "/etc/passwd", Data: []byte("root:x:0:0::/:/bin/sh\n")}},
			{{Path: "/bin/app", Mode: 0o755, Data: []byte("#!/bin/sh\necho hi\n")}},
		},
		RandomLayerSize: 256 << 10,
	})
	if err != nil {
		t.Fatal(err)
	}
	push(t, reg, "team/app", "v1", img)
	push(t, reg, "team/app", "latest", img)
	s := newStore(t, insecure(reg.Host()))

	if _, err := s.Get(ctx, reg.Ref("team/app", "v1")); !errdefs.IsNotFound(err) {
		t.Fatalf("Get before pull: %v, want NotFound", err)
	}

	got := mustPull(t, s, reg.Ref("team/app", "v1"), nil)
	m := img.Parsed()
	if got.Name != reg.Ref("team/app", "v1") {
		t.Errorf("Name = %q", got.Name)
	}
	if got.Target.Digest != img.Manifest.Digest || got.Manifest.Digest != img.Manifest.Digest {
		t.Errorf("Target %s / Manifest %s, want %s", got.Target.Digest, got.Manifest.Digest, img.Manifest.Digest)
	}
	if got.ID() != img.ConfigDigest().String() {
		t.Errorf("ID = %s, want %s", got.ID(), img.ConfigDigest())
	}
	if got.Kind != vmimage.KindNone {
		t.Errorf("Kind = %q for an OCI image", got.Kind)
	}
	wantSize := img.Manifest.Size + m.Config.Size
	for _, l := range m.Layers {
		wantSize += l.Size
	}
	if got.Size != wantSize {
		t.Errorf("Size = %d, want %d", got.Size, wantSize)
	}
	if got.Target.Data != nil || got.CreatedAt.IsZero() || got.UpdatedAt.Before(got.CreatedAt) {
		t.Errorf("record fields: %+v", got)
	}
	if s.HasBase(ctx, got) {
		t.Error("HasBase is true for an OCI image")
	}
	// Every blob is in the content store, verified.
	have := blobs(t, s)
	for _, d := range imageDigests(img) {
		if !have[d] {
			t.Errorf("content store lacks %s", d)
		}
	}

	mustPull(t, s, reg.Ref("team/app", "latest"), nil)
	byDigest := reg.Host() + "/team/app@" + img.Manifest.Digest.String()
	list, err := s.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	wantNames := []string{byDigest, reg.Ref("team/app", "latest"), reg.Ref("team/app", "v1")}
	sort.Strings(wantNames)
	if !slices.Equal(names(list), wantNames) {
		t.Fatalf("List = %v, want %v", names(list), wantNames)
	}
	for _, n := range wantNames {
		r, err := s.Get(ctx, n)
		if err != nil {
			t.Fatalf("Get(%s): %v", n, err)
		}
		if r.Name != n || r.ID() != got.ID() || r.Manifest.Digest != got.Manifest.Digest {
			t.Errorf("Get(%s) = %+v", n, r)
		}
	}

	// Resolve: tag, repo digest, image ID in every spelling give every
	// name of the image.
	for _, q := range []string{
		reg.Ref("team/app", "v1"),
		reg.Ref("team/app", "latest"),
		byDigest,
		got.ID(),
		got.Config.Digest.Encoded(),
	} {
		rs, err := s.Resolve(ctx, q)
		if err != nil {
			t.Fatalf("Resolve(%s): %v", q, err)
		}
		if !slices.Equal(names(rs), wantNames) {
			t.Errorf("Resolve(%s) = %v, want %v", q, names(rs), wantNames)
		}
	}
	for _, q := range []string{
		reg.Ref("team/app", "v2"),
		reg.Host() + "/team/other:v1",
		digest.FromString("nothing").String(),
		digest.FromString("nothing").Encoded(),
		reg.Host() + "/team/app@" + digest.FromString("nothing").String(),
	} {
		if _, err := s.Resolve(ctx, q); !errdefs.IsNotFound(err) {
			t.Errorf("Resolve(%s) = %v, want NotFound", q, err)
		}
	}
	if _, err := s.Resolve(ctx, "Not A Reference"); !errdefs.IsInvalidArgument(err) {
		t.Errorf("Resolve of a malformed reference = %v, want InvalidArgument", err)
	}

	// Config and OCIConfig.
	cfgBytes, err := s.Config(ctx, got)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(cfgBytes, blobOf(t, img, ocispec.MediaTypeImageConfig).Data) {
		t.Errorf("Config returned %q", cfgBytes)
	}
	oc, ok, err := s.OCIConfig(ctx, got)
	if err != nil || !ok {
		t.Fatalf("OCIConfig: ok=%v err=%v", ok, err)
	}
	if !slices.Equal(oc.Config.Entrypoint, []string{"/bin/app"}) || !slices.Equal(oc.Config.Cmd, []string{"--flag"}) ||
		!slices.Equal(oc.Config.Env, []string{"A=b"}) || oc.Config.WorkingDir != "/work" || oc.Config.User != "1000" {
		t.Errorf("OCIConfig.Config = %+v", oc.Config)
	}
	if oc.OS != "linux" || len(oc.RootFS.DiffIDs) != 3 {
		t.Errorf("OCIConfig: os %q, %d diff IDs", oc.OS, len(oc.RootFS.DiffIDs))
	}

	// Pulling what is stored downloads no blob again and keeps the
	// record's creation time.
	before := map[digest.Digest]int{}
	for _, d := range imageDigests(img) {
		before[d] = reg.Requests(d)
		if d != img.Manifest.Digest && before[d] != 1 {
			t.Errorf("blob %s was fetched %d times by two pulls of one image, want 1", d, before[d])
		}
	}
	again := mustPull(t, s, reg.Ref("team/app", "v1"), nil)
	for _, d := range imageDigests(img) {
		if n := reg.Requests(d); n != before[d] {
			t.Errorf("re-pull fetched %s again (%d GETs, %d before)", d, n, before[d])
		}
	}
	if !again.CreatedAt.Equal(got.CreatedAt) {
		t.Errorf("re-pull changed CreatedAt from %v to %v", got.CreatedAt, again.CreatedAt)
	}
	if ing := ingests(t, s); len(ing) != 0 {
		t.Errorf("ingests left after successful pulls: %+v", ing)
	}

	// A store reopened on the same root keeps everything.
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s2, err := imagestore.Open(ctx, imagestore.Options{Root: filepath.Join(s.root, "images"), Snapshotter: s.sn, Hosts: insecure(reg.Host())})
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	list2, err := s2.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(names(list2), wantNames) {
		t.Errorf("after reopening, List = %v", names(list2))
	}
}

// An index picks the manifest of this host's platform.
func TestPullIndex(t *testing.T) {
	ctx := context.Background()
	reg := testregistry.Start(t, testregistry.Options{})
	var descs []ocispec.Descriptor
	var want testimage.Image
	for i, arch := range []string{"riscv64", runtime.GOARCH, "s390x"} {
		img, err := testimage.OCI(testimage.OCIOptions{Seed: uint64(i), Arch: arch, Cmd: []string{arch}})
		if err != nil {
			t.Fatal(err)
		}
		push(t, reg, "multi", "", img)
		d := img.Manifest
		d.Platform = &ocispec.Platform{OS: "linux", Architecture: arch}
		if arch == "arm64" {
			d.Platform.Variant = "v8"
		}
		descs = append(descs, d)
		if arch == runtime.GOARCH {
			want = img
		}
	}
	idx, err := json.Marshal(ocispec.Index{
		Versioned: specs.Versioned{SchemaVersion: 2},
		MediaType: ocispec.MediaTypeImageIndex,
		Manifests: descs,
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := reg.PushManifest(ctx, "multi", "v1", ocispec.MediaTypeImageIndex, idx); err != nil {
		t.Fatal(err)
	}
	if runtime.GOOS != "linux" {
		t.Skip("the index holds linux images only")
	}
	s := newStore(t, insecure(reg.Host()))
	got := mustPull(t, s, reg.Ref("multi", "v1"), nil)
	if got.Target.Digest != digest.FromBytes(idx) || got.Target.MediaType != ocispec.MediaTypeImageIndex {
		t.Errorf("Target = %+v, want the index", got.Target)
	}
	if got.Manifest.Digest != want.Manifest.Digest || got.ID() != want.ConfigDigest().String() {
		t.Errorf("picked manifest %s (config %s), want %s for %s", got.Manifest.Digest, got.ID(), want.Manifest.Digest, runtime.GOARCH)
	}
	oc, _, err := s.OCIConfig(ctx, got)
	if err != nil || !slices.Equal(oc.Config.Cmd, []string{runtime.GOARCH}) {
		t.Errorf("OCIConfig = %+v, %v", oc.Config, err)
	}
	// The other platforms' images were not downloaded.
	for _, d := range descs {
		if d.Digest != want.Manifest.Digest && reg.Requests(d.Digest) != 0 {
			t.Errorf("manifest of %s fetched", d.Platform.Architecture)
		}
	}
	rs, err := s.Resolve(ctx, reg.Host()+"/multi@"+digest.FromBytes(idx).String())
	if err != nil || len(rs) != 2 {
		t.Errorf("Resolve by index digest = %v, %v", names(rs), err)
	}
}

// ---- removal and garbage collection ----

func TestRemove(t *testing.T) {
	ctx := context.Background()
	reg := testregistry.Start(t, testregistry.Options{})
	shared := []testimage.File{{Path: "/shared.bin", Data: randomBytes(7, 512<<10)}}
	imgA, err := testimage.OCI(testimage.OCIOptions{Cmd: []string{"a"}, Layers: [][]testimage.File{shared}, RandomLayerSize: 300 << 10, Seed: 1})
	if err != nil {
		t.Fatal(err)
	}
	imgB, err := testimage.OCI(testimage.OCIOptions{Cmd: []string{"b"}, Layers: [][]testimage.File{shared}, Seed: 2})
	if err != nil {
		t.Fatal(err)
	}
	sharedLayer := imgA.Parsed().Layers[0].Digest
	if imgB.Parsed().Layers[0].Digest != sharedLayer {
		t.Fatal("test images do not share their first layer")
	}
	push(t, reg, "a", "v1", imgA)
	push(t, reg, "a", "v2", imgA)
	push(t, reg, "b", "v1", imgB)

	var inUse map[string]bool
	s := newStore(t, insecure(reg.Host()), func(o *imagestore.Options) {
		o.InUse = func(id string) bool { return inUse[id] }
	})
	u0, _, err := s.Usage(ctx)
	if err != nil {
		t.Fatal(err)
	}

	a := mustPull(t, s, reg.Ref("a", "v1"), nil)
	mustPull(t, s, reg.Ref("a", "v2"), nil)
	b := mustPull(t, s, reg.Ref("b", "v1"), nil)
	u1, _, err := s.Usage(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if u1-u0 < a.Size {
		t.Errorf("usage grew by %d bytes after pulls of %d+%d bytes", u1-u0, a.Size, b.Size)
	}

	// A sandbox uses A: no removal, under any of its names.
	inUse = map[string]bool{a.ID(): true}
	for _, q := range []string{reg.Ref("a", "v1"), a.ID()} {
		err := s.Remove(ctx, q)
		wantClass(t, err, "FailedPrecondition", errdefs.IsFailedPrecondition, a.ID())
	}
	if rs, err := s.Resolve(ctx, a.ID()); err != nil || len(rs) != 3 {
		t.Fatalf("after refused removal: %v, %v", names(rs), err)
	}
	inUse = nil

	// Removing by one tag removes every name of the image, and its blobs
	// except the layer B shares.
	if err := s.Remove(ctx, reg.Ref("a", "v2")); err != nil {
		t.Fatal(err)
	}
	for _, q := range []string{reg.Ref("a", "v1"), reg.Ref("a", "v2"), reg.Host() + "/a@" + imgA.Manifest.Digest.String(), a.ID()} {
		if _, err := s.Resolve(ctx, q); !errdefs.IsNotFound(err) {
			t.Errorf("Resolve(%s) after removal: %v, want NotFound", q, err)
		}
	}
	have := blobs(t, s)
	for _, d := range imageDigests(imgA) {
		if have[d] != (d == sharedLayer) {
			t.Errorf("after removing A: blob %s present=%v", d, have[d])
		}
	}
	for _, d := range imageDigests(imgB) {
		if !have[d] {
			t.Errorf("removing A removed %s of B", d)
		}
	}
	if _, err := s.Config(ctx, b); err != nil {
		t.Errorf("B's config after removing A: %v", err)
	}
	u2, _, err := s.Usage(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if u2 >= u1 {
		t.Errorf("usage did not drop after removal: %d then %d", u1, u2)
	}

	// Removal is not idempotent in the API: a second one says NotFound
	// (CRI callers map that to success).
	if err := s.Remove(ctx, reg.Ref("a", "v2")); !errdefs.IsNotFound(err) {
		t.Errorf("second Remove = %v, want NotFound", err)
	}
	if err := s.Remove(ctx, a.ID()); !errdefs.IsNotFound(err) {
		t.Errorf("Remove by ID of a removed image = %v, want NotFound", err)
	}
	if err := s.Remove(ctx, "Bad Ref"); !errdefs.IsInvalidArgument(err) {
		t.Errorf("Remove of a malformed reference = %v, want InvalidArgument", err)
	}

	// Removing by ID without the algorithm, then everything is gone.
	if err := s.Remove(ctx, strings.TrimPrefix(b.ID(), "sha256:")); err != nil {
		t.Fatal(err)
	}
	if list, _ := s.List(ctx); len(list) != 0 {
		t.Errorf("images left: %v", names(list))
	}
	if have := blobs(t, s); len(have) != 0 {
		t.Errorf("blobs left after removing every image: %v", have)
	}
	u3, _, err := s.Usage(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if u3 > u0+64<<10 {
		t.Errorf("usage %d after removing every image, %d when empty", u3, u0)
	}

	// Remove by repo digest.
	mustPull(t, s, reg.Ref("b", "v1"), nil)
	if err := s.Remove(ctx, reg.Host()+"/b@"+imgB.Manifest.Digest.String()); err != nil {
		t.Fatal(err)
	}
	if list, _ := s.List(ctx); len(list) != 0 {
		t.Errorf("images left after removal by digest: %v", names(list))
	}
}

// A VM base a sandbox was cloned from outlives its image until the clone
// is gone and Collect runs.
func TestRemoveVMImageWithClone(t *testing.T) {
	ctx := context.Background()
	reg := testregistry.Start(t, testregistry.Options{})
	img, err := testimage.Tart(testimage.TartOptions{Seed: 3, DiskSize: 4 << 20, ChunkSize: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	push(t, reg, "vm", "v1", img)
	s := newStore(t, insecure(reg.Host()))
	u0, _, err := s.Usage(ctx)
	if err != nil {
		t.Fatal(err)
	}
	got := mustPull(t, s, reg.Ref("vm", "v1"), nil)
	base := imagestore.BaseName(got.Manifest.Digest)
	if !s.HasBase(ctx, got) {
		t.Fatal("no base after pull")
	}
	if _, err := s.sn.Prepare(ctx, "sandbox-1", base); err != nil {
		t.Fatal(err)
	}
	u1, _, err := s.Usage(ctx)
	if err != nil {
		t.Fatal(err)
	}

	if err := s.Remove(ctx, got.ID()); err != nil {
		t.Fatalf("Remove with a clone of the base: %v", err)
	}
	if _, err := s.sn.Stat(ctx, base); err != nil {
		t.Fatalf("base removed while a clone uses it: %v", err)
	}
	if len(blobs(t, s)) != 0 {
		t.Error("blobs of the removed image kept")
	}
	if err := s.sn.Remove(ctx, "sandbox-1"); err != nil {
		t.Fatal(err)
	}
	if err := s.Collect(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := s.sn.Stat(ctx, base); !errdefs.IsNotFound(err) {
		t.Fatalf("base after Collect: %v, want NotFound", err)
	}
	u2, _, err := s.Usage(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if u2 >= u1 || u2 > u0+64<<10 {
		t.Errorf("usage %d empty, %d with the image, %d after Collect", u0, u1, u2)
	}
	if sn := snaps(t, s); len(sn) != 0 {
		t.Errorf("snapshots left: %v", sn)
	}
}

// Collect on a store with nothing to collect, or right after Open, is
// harmless; Collect keeps what records reference.
func TestCollectKeepsLiveImages(t *testing.T) {
	ctx := context.Background()
	reg := testregistry.Start(t, testregistry.Options{})
	img, err := testimage.Linux(testimage.LinuxOptions{Kernel: randomBytes(1, 64<<10), Disk: testimage.DiskPattern(1, 1<<20)})
	if err != nil {
		t.Fatal(err)
	}
	push(t, reg, "linux", "v1", img)
	s := newStore(t, insecure(reg.Host()))
	if err := s.Collect(ctx); err != nil {
		t.Fatal(err)
	}
	got := mustPull(t, s, reg.Ref("linux", "v1"), nil)
	before := blobs(t, s)
	if err := s.Collect(ctx); err != nil {
		t.Fatal(err)
	}
	if after := blobs(t, s); len(after) != len(before) {
		t.Errorf("Collect removed live blobs: %d before, %d after", len(before), len(after))
	}
	if !s.HasBase(ctx, got) {
		t.Error("Collect removed a live base")
	}
}

// ---- small helpers ----

// sparseSupported reports whether dir's file system keeps holes.
func sparseSupported(t testing.TB, dir string) bool {
	t.Helper()
	f, err := os.CreateTemp(dir, "sparse-probe")
	if err != nil {
		t.Fatal(err)
	}
	defer os.Remove(f.Name())
	defer f.Close()
	if err := f.Truncate(4 << 20); err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt([]byte{1}, 2<<20); err != nil {
		t.Fatal(err)
	}
	return allocated(t, f.Name()) < 1<<20
}

func allocated(t testing.TB, path string) int64 {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		t.Skip("no st_blocks on this platform")
	}
	return int64(st.Blocks) * 512
}

var errTimeout = errors.New("timed out")

// eventually polls cond every 5 ms for up to d.
func eventually(d time.Duration, cond func() bool) error {
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			return errTimeout
		}
		time.Sleep(5 * time.Millisecond)
	}
	return nil
}

// VM image formats use stub configs that many images share byte for byte
// (every Tart image of one OS, architecture and disk format has the same
// config; agoda images all have the empty config): distinct images must
// still get distinct IDs, and removing one must not remove another.
func TestVMImageIDsAreDistinct(t *testing.T) {
	ctx := context.Background()
	reg := testregistry.Start(t, testregistry.Options{})
	type pushed struct {
		ref string
		img testimage.Image
	}
	var all []pushed
	for seed := uint64(1); seed <= 2; seed++ {
		tart, err := testimage.Tart(testimage.TartOptions{Seed: seed, DiskSize: 1 << 20})
		if err != nil {
			t.Fatal(err)
		}
		agoda, err := testimage.Agoda(testimage.AgodaOptions{Seed: seed, DiskSize: 1 << 20})
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range []pushed{{fmt.Sprintf("tart%d", seed), tart}, {fmt.Sprintf("agoda%d", seed), agoda}} {
			push(t, reg, p.ref, "v1", p.img)
			all = append(all, pushed{reg.Ref(p.ref, "v1"), p.img})
		}
	}
	if all[0].img.ConfigDigest() != all[2].img.ConfigDigest() || all[1].img.ConfigDigest() != all[3].img.ConfigDigest() {
		t.Fatal("the test images do not share their configs; the test tests nothing")
	}
	s := newStore(t, insecure(reg.Host()))
	ids := map[string]string{}
	var got []imagestore.Image
	for _, p := range all {
		img := mustPull(t, s, p.ref, nil)
		if other, dup := ids[img.ID()]; dup {
			t.Errorf("%s and %s have the same ID %s", other, p.ref, img.ID())
		}
		ids[img.ID()] = p.ref
		got = append(got, img)
	}
	for i, img := range got {
		rs, err := s.Resolve(ctx, img.ID())
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range rs {
			if r.Manifest.Digest != all[i].img.Manifest.Digest {
				t.Errorf("Resolve(%s) (ID of %s) includes %s", img.ID(), all[i].ref, r.Name)
			}
		}
	}
	if err := s.Remove(ctx, got[0].ID()); err != nil {
		t.Fatal(err)
	}
	for _, img := range got[1:] {
		if _, err := s.Get(ctx, img.Name); err != nil {
			t.Errorf("removing %s removed %s: %v", got[0].Name, img.Name, err)
		}
		if !s.HasBase(ctx, img) {
			t.Errorf("removing %s removed the base of %s", got[0].Name, img.Name)
		}
	}
}

// Open removes the extraction snapshots a crash mid-pull left behind, and
// nothing else.
func TestOpenRemovesStaleExtractions(t *testing.T) {
	ctx := context.Background()
	s := newStore(t, nil)
	if _, err := s.sn.Prepare(ctx, "macvz.extract/0123/abcd", ""); err != nil {
		t.Fatal(err)
	}
	if _, err := s.sn.Prepare(ctx, "sandbox-1", ""); err != nil {
		t.Fatal(err)
	}
	// An unpack to resume without its record (a crash between the two)
	// cannot be resumed: it goes too.
	orphan := imagestore.PartialKey(digest.FromString("a manifest"))
	if _, err := s.sn.Prepare(ctx, orphan, ""); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s2, err := imagestore.Open(ctx, imagestore.Options{Root: filepath.Join(s.root, "images"), Snapshotter: s.sn})
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	left := snaps(t, s)
	if _, ok := left["macvz.extract/0123/abcd"]; ok {
		t.Error("stale extraction kept")
	}
	if _, ok := left[orphan]; ok {
		t.Error("an unpack to resume without its record kept")
	}
	if _, ok := left["sandbox-1"]; !ok {
		t.Error("a sandbox's snapshot was removed")
	}
}

// Footprint counts an image's blobs and its unpacked disk: the disk's
// whole length logically, only its written blocks on disk when the file
// system keeps holes; an image's footprint is gone with it.
func TestFootprint(t *testing.T) {
	ctx := context.Background()
	reg := testregistry.Start(t, testregistry.Options{})
	disk := make([]byte, 8<<20)
	copy(disk[1<<20:], randomBytes(7, 256<<10)) // the rest are holes
	img, err := testimage.Tart(testimage.TartOptions{Seed: 7, Disk: disk, ChunkSize: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	push(t, reg, "vm", "v1", img)
	// The chunks kept: the footprint counts them with the disk.
	s := newStore(t, insecure(reg.Host()), func(o *imagestore.Options) { o.KeepDiskChunks = true })
	got := mustPull(t, s, reg.Ref("vm", "v1"), nil)
	fp, err := s.Footprint(ctx, got)
	if err != nil {
		t.Fatal(err)
	}
	// The blobs count once each: the disk's zero chunks are one blob,
	// which Size counts once per layer; the base is the disk, the
	// unpacked NVRAM (256 KiB) and small files.
	if fp.Logical < int64(len(disk))+got.Manifest.Size || fp.Logical > got.Size+int64(len(disk))+256<<10+64<<10 {
		t.Errorf("logical size %d, want the disk's %d and at most the blobs' %d", fp.Logical, len(disk), got.Size)
	}
	if fp.Allocated <= 256<<10 {
		t.Errorf("allocated %d, want at least the written part of the disk", fp.Allocated)
	}
	if sparseSupported(t, s.root) && fp.Allocated >= fp.Logical-4<<20 {
		t.Errorf("allocated %d of logical %d: the disk's holes were counted", fp.Allocated, fp.Logical)
	}
	if err := s.Remove(ctx, got.ID()); err != nil {
		t.Fatal(err)
	}
	if fp, err := s.Footprint(ctx, got); err != nil || fp.Allocated != 0 {
		t.Errorf("footprint of a removed image: %+v, %v", fp, err)
	}
}

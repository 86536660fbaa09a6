package imagestore_test

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/macvz/macvz/integration/testimage"
	"github.com/macvz/macvz/integration/testregistry"
	"github.com/macvz/macvz/snapshotter"
	"github.com/macvz/macvz/vmimage"
	"github.com/macvz/macvz/vmimage/applelz4"
	"github.com/macvz/macvz/vmimage/imagestore"
)

// viewBase opens a read-only view of img's committed base and returns its
// directory.
func viewBase(t testing.TB, s *testStore, img imagestore.Image) string {
	t.Helper()
	ctx := context.Background()
	key := fmt.Sprintf("test-view-%d", time.Now().UnixNano())
	mounts, err := s.sn.View(ctx, key, imagestore.BaseName(img.Manifest.Digest))
	if err != nil {
		t.Fatalf("view of the base of %s: %v", img.Name, err)
	}
	t.Cleanup(func() { s.sn.Remove(context.Background(), key) })
	dir, err := snapshotter.Dir(mounts)
	if err != nil {
		t.Fatal(err)
	}
	return dir
}

func sameFile(t testing.TB, path string, want []byte) {
	t.Helper()
	got, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		i := 0
		for i < min(len(got), len(want)) && got[i] == want[i] {
			i++
		}
		t.Fatalf("%s: %d bytes differ from the %d expected, first difference at byte %d", filepath.Base(path), len(got), len(want), i)
	}
}

// dataGranules is how many bytes of disk lie in holeSize-aligned granules
// that hold a non-zero byte: what a sparse unpack must allocate, at most.
func dataGranules(disk []byte, gran int) int64 {
	var n int64
	for off := 0; off < len(disk); off += gran {
		g := disk[off:min(off+gran, len(disk))]
		if !allZero(g) {
			n += int64(len(g))
		}
	}
	return n
}

func allZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

// checkSparse checks that the unpacked disk at path has holes where the
// pattern is zero, and that the committed base's usage agrees.
func checkSparse(t testing.TB, s *testStore, img imagestore.Image, path string, disk []byte, otherFiles int64) {
	t.Helper()
	if !sparseSupported(t, filepath.Dir(path)) {
		t.Logf("%s does not keep holes; sparseness not checked", filepath.Dir(path))
		return
	}
	zeros := int64(len(disk)) - dataGranules(disk, 64<<10)
	if zeros < int64(len(disk))/10 {
		t.Fatalf("test disk has only %d zero bytes in 64 KiB granules", zeros)
	}
	limit := dataGranules(disk, 64<<10) + 64<<10
	floor := dataGranules(disk, 4<<10)
	if a := allocated(t, path); a > limit || a < floor {
		t.Errorf("disk of %d bytes has %d allocated, want between %d (4 KiB blocks with data) and %d (64 KiB granules with data)", len(disk), a, floor, limit)
	}
	// The committed base itself (the view above is a clone of it).
	u, err := s.sn.Usage(context.Background(), imagestore.BaseName(img.Manifest.Digest))
	if err != nil {
		t.Fatal(err)
	}
	if u.Size > limit+otherFiles+64<<10 {
		t.Errorf("base uses %d bytes; its disk has %d bytes of data granules and the other files %d bytes", u.Size, limit, otherFiles)
	}
}

func TestPullVMFormats(t *testing.T) {
	ctx := context.Background()
	reg := testregistry.Start(t, testregistry.Options{})

	t.Run("tart", func(t *testing.T) {
		disk := testimage.DiskPattern(11, 9<<20+12345)
		nvram := randomBytes(12, 256<<10)
		img, err := testimage.Tart(testimage.TartOptions{Seed: 11, Disk: disk, ChunkSize: 2 << 20, NVRAM: nvram, CPUCount: 3})
		if err != nil {
			t.Fatal(err)
		}
		// The chunks are real Apple LZ4 streams with compressed blocks.
		chunks, compressed := 0, 0
		for _, l := range img.Parsed().Layers {
			if l.MediaType != vmimage.MediaTypeTartDiskV2 {
				continue
			}
			chunks++
			data := blobOf(t, testimage.Image{Blobs: blobsWith(img, l.Digest)}, l.MediaType).Data
			if !bytes.HasSuffix(data, []byte(applelz4.MagicEnd)) {
				t.Fatalf("chunk %s does not end with %q", l.Digest, applelz4.MagicEnd)
			}
			if bytes.Contains(data, []byte(applelz4.MagicCompressed)) {
				compressed++
			}
		}
		if chunks != 5 || compressed == 0 {
			t.Fatalf("%d chunks, %d with compressed blocks", chunks, compressed)
		}
		push(t, reg, "macos/tart", "sonoma", img)
		// The chunks kept (image.keep_disk_chunks): a lost base is
		// unpacked again from them (TestPullReleasesDiskChunks: not).
		s := newStore(t, insecure(reg.Host()), func(o *imagestore.Options) { o.KeepDiskChunks = true })
		got := mustPull(t, s, reg.Ref("macos/tart", "sonoma"), nil)
		if got.Kind != vmimage.KindTart || !s.HasBase(ctx, got) {
			t.Fatalf("Kind %q, HasBase %v", got.Kind, s.HasBase(ctx, got))
		}
		if got.ID() != img.Manifest.Digest.String() {
			t.Errorf("ID of a VM image = %s, want its manifest digest %s", got.ID(), img.Manifest.Digest)
		}
		if _, ok, err := s.OCIConfig(ctx, got); ok || err != nil {
			t.Errorf("OCIConfig of a VM image: ok=%v err=%v", ok, err)
		}
		dir := viewBase(t, s, got)
		sameFile(t, filepath.Join(dir, vmimage.DiskFile), disk)
		sameFile(t, filepath.Join(dir, vmimage.NVRAMFile), nvram)
		d := readDescriptor(t, dir)
		if d.Kind != vmimage.KindTart || d.Disk != vmimage.DiskFile || d.NVRAM != vmimage.NVRAMFile || d.MinCPUs != 3 || d.OS != "darwin" {
			t.Errorf("descriptor = %+v", d)
		}
		checkSparse(t, s, got, filepath.Join(dir, vmimage.DiskFile), disk, int64(len(nvram))+8<<10)

		// A re-pull downloads nothing; a base lost since is unpacked
		// again from the content store, still without downloading.
		before := map[digest.Digest]int{}
		for _, b := range img.Blobs {
			before[b.Desc.Digest] = reg.Requests(b.Desc.Digest)
		}
		mustPull(t, s, reg.Ref("macos/tart", "sonoma"), nil)
		loseBase(t, s, got)
		if s.HasBase(ctx, got) {
			t.Fatal("HasBase after the base was removed")
		}
		mustPull(t, s, reg.Ref("macos/tart", "sonoma"), nil)
		for _, b := range img.Blobs {
			if n := reg.Requests(b.Desc.Digest); n != before[b.Desc.Digest] {
				t.Errorf("re-pull fetched %s (%s) again", b.Desc.Digest, b.Desc.MediaType)
			}
		}
		if !s.HasBase(ctx, got) {
			t.Fatal("re-pull did not restore the base")
		}
		sameFile(t, filepath.Join(viewBase(t, s, got), vmimage.DiskFile), disk)
	})

	t.Run("agoda", func(t *testing.T) {
		disk := testimage.DiskPattern(21, 6<<20)
		aux := make([]byte, 1<<20)
		copy(aux[4096:], randomBytes(22, 8192))
		img, err := testimage.Agoda(testimage.AgodaOptions{Seed: 21, Disk: disk, Aux: aux})
		if err != nil {
			t.Fatal(err)
		}
		push(t, reg, "macos/agoda", "v1", img)
		s := newStore(t, insecure(reg.Host()))
		got := mustPull(t, s, reg.Ref("macos/agoda", "v1"), nil)
		if got.Kind != vmimage.KindAgoda || !s.HasBase(ctx, got) {
			t.Fatalf("Kind %q, HasBase %v", got.Kind, s.HasBase(ctx, got))
		}
		dir := viewBase(t, s, got)
		sameFile(t, filepath.Join(dir, vmimage.DiskFile), disk)
		sameFile(t, filepath.Join(dir, vmimage.AuxFile), aux)
		if d := readDescriptor(t, dir); d.Kind != vmimage.KindAgoda || d.Disk != vmimage.DiskFile || len(d.HardwareModel) == 0 {
			t.Errorf("descriptor = %+v", d)
		}
		checkSparse(t, s, got, filepath.Join(dir, vmimage.DiskFile), disk, 1<<20+8<<10)
	})

	for _, gz := range []bool{false, true} {
		t.Run(fmt.Sprintf("linux/gzip=%v", gz), func(t *testing.T) {
			kernel := randomBytes(31, 700<<10)
			initrd := randomBytes(32, 300<<10)
			disk := testimage.DiskPattern(33, 5<<20)
			img, err := testimage.Linux(testimage.LinuxOptions{
				Kernel: kernel, Initrd: initrd, Disk: disk, GzipDisk: gz,
				KernelCmdline: "console=ttyS0", MinCPUs: 2,
				Process: &vmimage.Process{Cmd: []string{"/sbin/init"}},
			})
			if err != nil {
				t.Fatal(err)
			}
			repo := fmt.Sprintf("linux/guest-%v", gz)
			push(t, reg, repo, "v1", img)
			s := newStore(t, insecure(reg.Host()))
			got := mustPull(t, s, reg.Ref(repo, "v1"), nil)
			if got.Kind != vmimage.KindLinux || !s.HasBase(ctx, got) {
				t.Fatalf("Kind %q, HasBase %v", got.Kind, s.HasBase(ctx, got))
			}
			dir := viewBase(t, s, got)
			sameFile(t, filepath.Join(dir, vmimage.KernelFile), kernel)
			sameFile(t, filepath.Join(dir, vmimage.InitrdFile), initrd)
			sameFile(t, filepath.Join(dir, vmimage.DiskFile), disk)
			d := readDescriptor(t, dir)
			if d.Kind != vmimage.KindLinux || d.KernelCmdline != "console=ttyS0" || d.MinCPUs != 2 || d.Process == nil || d.Process.Cmd[0] != "/sbin/init" {
				t.Errorf("descriptor = %+v", d)
			}
			cfg, err := s.Config(ctx, got)
			if err != nil {
				t.Fatal(err)
			}
			if p, err := vmimage.DefaultProcess(got.Kind, cfg); err != nil || p == nil || p.Cmd[0] != "/sbin/init" {
				t.Errorf("DefaultProcess = %+v, %v", p, err)
			}
			checkSparse(t, s, got, filepath.Join(dir, vmimage.DiskFile), disk, 1<<20+8<<10)
		})
	}
}

func blobsWith(img testimage.Image, d digest.Digest) []testimage.Blob {
	for _, b := range img.Blobs {
		if b.Desc.Digest == d {
			return []testimage.Blob{b}
		}
	}
	return nil
}

func readDescriptor(t testing.TB, dir string) vmimage.Descriptor {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, vmimage.DescriptorFile))
	if err != nil {
		t.Fatal(err)
	}
	var d vmimage.Descriptor
	if err := json.Unmarshal(b, &d); err != nil {
		t.Fatal(err)
	}
	return d
}

// ---- errors ----

func TestPullBadReference(t *testing.T) {
	s := newStore(t, nil)
	for _, ref := range []string{
		"",
		"Busybox:latest",
		"docker.io/library/UPPER:v1",
		"example.com/repo:bad tag",
		"example.com/repo@sha256:abc",
		"example.com/repo:" + strings.Repeat("t", 200),
		"://nope",
	} {
		_, err := s.Pull(context.Background(), ref, nil)
		wantClass(t, err, "InvalidArgument for "+ref, errdefs.IsInvalidArgument)
	}
	if list, _ := s.List(context.Background()); len(list) != 0 {
		t.Errorf("images after failed pulls: %v", names(list))
	}
}

func TestPullNotFound(t *testing.T) {
	reg := testregistry.Start(t, testregistry.Options{})
	img, err := testimage.OCI(testimage.OCIOptions{})
	if err != nil {
		t.Fatal(err)
	}
	push(t, reg, "app", "v1", img)
	s := newStore(t, insecure(reg.Host()))
	for _, ref := range []string{
		reg.Ref("app", "v2"),
		reg.Ref("nosuchrepo", "v1"),
		reg.Host() + "/app@" + digest.FromString("x").String(),
	} {
		_, err := s.Pull(context.Background(), ref, nil)
		wantClass(t, err, "NotFound for "+ref, errdefs.IsNotFound)
	}
	assertEmpty(t, s, img)
}

func TestPullUnsupportedManifest(t *testing.T) {
	reg := testregistry.Start(t, testregistry.Options{})
	s := newStore(t, insecure(reg.Host()))
	serve := func(tag, mediaType string, body []byte) {
		reg.ServeManifest("app", tag, mediaType, body)
		reg.ServeManifest("app", digest.FromBytes(body).String(), mediaType, body)
	}

	const weird = "application/vnd.example.weird.manifest.v7+json"
	serve("weird", weird, []byte(`{"schemaVersion":2,"mediaType":"`+weird+`"}`))
	_, err := s.Pull(context.Background(), reg.Ref("app", "weird"), nil)
	wantClass(t, err, "NotImplemented", errdefs.IsNotImplemented, weird)

	const schema1 = "application/vnd.docker.distribution.manifest.v1+prettyjws"
	serve("schema1", schema1, []byte(`{"schemaVersion":1,"name":"app","tag":"schema1","fsLayers":[]}`))
	_, err = s.Pull(context.Background(), reg.Ref("app", "schema1"), nil)
	if err == nil || !strings.Contains(err.Error(), schema1) {
		t.Errorf("pull of a schema 1 manifest: %v, want an error naming %s", err, schema1)
	}

	serve("garbage", ocispec.MediaTypeImageManifest, []byte(`{"schemaVersion":2,"config":`))
	_, err = s.Pull(context.Background(), reg.Ref("app", "garbage"), nil)
	wantClass(t, err, "InvalidArgument", errdefs.IsInvalidArgument, ocispec.MediaTypeImageManifest)

	serve("noconfig", ocispec.MediaTypeImageManifest, []byte(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","layers":[]}`))
	_, err = s.Pull(context.Background(), reg.Ref("app", "noconfig"), nil)
	wantClass(t, err, "InvalidArgument", errdefs.IsInvalidArgument, "config")

	if list, _ := s.List(context.Background()); len(list) != 0 {
		t.Errorf("images after failed pulls: %v", names(list))
	}
	if b := blobs(t, s); len(b) != 0 {
		t.Errorf("blobs kept after failed pulls: %v", b)
	}
}

func TestPullCorruptBlob(t *testing.T) {
	reg := testregistry.Start(t, testregistry.Options{})
	oci, err := testimage.OCI(testimage.OCIOptions{RandomLayerSize: 1 << 20, Seed: 4})
	if err != nil {
		t.Fatal(err)
	}
	tart, err := testimage.Tart(testimage.TartOptions{Seed: 4, DiskSize: 4 << 20, ChunkSize: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	push(t, reg, "oci", "v1", oci)
	push(t, reg, "tart", "v1", tart)
	for _, tc := range []struct {
		repo string
		img  testimage.Image
		bad  digest.Digest
	}{
		{"oci", oci, oci.Parsed().Layers[1].Digest},
		{"oci", oci, oci.ConfigDigest()},
		{"tart", tart, tart.Parsed().Layers[2].Digest},
		{"tart", tart, tart.Parsed().Layers[len(tart.Parsed().Layers)-1].Digest}, // nvram
	} {
		t.Run(tc.repo+"/"+tc.bad.Encoded()[:12], func(t *testing.T) {
			s := newStore(t, insecure(reg.Host()))
			reg.CorruptBlob(tc.bad)
			_, err := s.Pull(context.Background(), reg.Ref(tc.repo, "v1"), nil)
			reg.ClearFaults()
			wantClass(t, err, "DataLoss", errdefs.IsDataLoss, tc.bad.String())
			assertEmpty(t, s, tc.img)

			// The store is not left in a state that breaks a later pull.
			got := mustPull(t, s, reg.Ref(tc.repo, "v1"), nil)
			if got.Kind != vmimage.KindNone && !s.HasBase(context.Background(), got) {
				t.Error("no base after the second pull")
			}
		})
	}
}

func TestPullBadTartChunks(t *testing.T) {
	reg := testregistry.Start(t, testregistry.Options{})
	for _, tc := range []struct {
		name  string
		opts  testimage.TartOptions
		class func(error) bool
		want  string
	}{
		{"truncated", testimage.TartOptions{TruncateChunks: []int{2}}, errdefs.IsDataLoss, vmimage.MediaTypeTartDiskV2},
		{"truncated-first", testimage.TartOptions{TruncateChunks: []int{0}}, errdefs.IsDataLoss, vmimage.MediaTypeTartDiskV2},
		{"bad-digest", testimage.TartOptions{BadDigestChunks: []int{1}}, errdefs.IsDataLoss, "digest"},
		{"asif", testimage.TartOptions{DiskFormat: "asif"}, errdefs.IsNotImplemented, `"asif"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			o := tc.opts
			o.Seed, o.DiskSize, o.ChunkSize = 5, 4<<20, 1<<20
			img, err := testimage.Tart(o)
			if err != nil {
				t.Fatal(err)
			}
			push(t, reg, "tart-"+tc.name, "v1", img)
			s := newStore(t, insecure(reg.Host()))
			_, err = s.Pull(context.Background(), reg.Ref("tart-"+tc.name, "v1"), nil)
			wantClass(t, err, tc.name, tc.class, tc.want)
			assertEmpty(t, s, img)
		})
	}
}

func TestPullRegistryDown(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := ln.Addr().String()
	ln.Close()

	reg := testregistry.Start(t, testregistry.Options{})
	img, err := testimage.OCI(testimage.OCIOptions{})
	if err != nil {
		t.Fatal(err)
	}
	push(t, reg, "app", "v1", img)
	stopped := reg.Ref("app", "v1")
	reg.Stop()

	for _, tc := range []struct{ host, ref string }{
		{closed, closed + "/app:v1"},
		{reg.Host(), stopped},
	} {
		s := newStore(t, insecure(tc.host))
		_, err := s.Pull(context.Background(), tc.ref, nil)
		wantClass(t, err, "Unavailable", errdefs.IsUnavailable, tc.host)
	}

	// A registry that speaks plain HTTP but is not configured insecure.
	reg2 := testregistry.Start(t, testregistry.Options{})
	push(t, reg2, "app", "v1", img)
	s := newStore(t, nil)
	_, err = s.Pull(context.Background(), reg2.Ref("app", "v1"), nil)
	wantClass(t, err, "Unavailable", errdefs.IsUnavailable, reg2.Host())
}

// privateImage is a small image in a registry of its own that wants
// alice's password ("s3cret"), and its reference.
func privateImage(t *testing.T) (*testregistry.Registry, testimage.Image, string) {
	t.Helper()
	reg := testregistry.Start(t, testregistry.Options{Username: "alice", Password: "s3cret"})
	img, err := testimage.OCI(testimage.OCIOptions{RandomLayerSize: 64 << 10})
	if err != nil {
		t.Fatal(err)
	}
	push(t, reg, "private", "v1", img)
	return reg, img, reg.Ref("private", "v1")
}

// denied: the registry refused the pull's credentials.
func denied(err error) bool { return errdefs.IsUnauthorized(err) || errdefs.IsPermissionDenied(err) }

func TestPullAuth(t *testing.T) {
	reg, img, ref := privateImage(t)
	b64 := func(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }

	for _, tc := range []struct {
		name  string
		auth  *imagestore.Auth
		ok    bool
		class func(error) bool
	}{
		{"none", nil, false, denied},
		{"wrong-password", &imagestore.Auth{Username: "alice", Password: "guess"}, false, denied},
		{"wrong-user", &imagestore.Auth{Username: "bob", Password: "s3cret"}, false, denied},
		{"wrong-auth", &imagestore.Auth{Auth: b64("alice:nope")}, false, denied},
		{"other-server", &imagestore.Auth{Username: "alice", Password: "s3cret", ServerAddress: "registry.example.com"}, false, denied},
		{"bad-base64", &imagestore.Auth{Auth: "%%%"}, false, errdefs.IsInvalidArgument},
		{"no-colon", &imagestore.Auth{Auth: b64("alice")}, false, errdefs.IsInvalidArgument},
		{"password", &imagestore.Auth{Username: "alice", Password: "s3cret"}, true, nil},
		{"auth-field", &imagestore.Auth{Auth: b64("alice:s3cret")}, true, nil},
		{"server-address", &imagestore.Auth{Username: "alice", Password: "s3cret", ServerAddress: "http://" + reg.Host() + "/v2/"}, true, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := newStore(t, insecure(reg.Host()))
			got, err := s.Pull(context.Background(), ref, tc.auth)
			if tc.ok {
				if err != nil {
					t.Fatal(err)
				}
				if got.ID() != img.ConfigDigest().String() {
					t.Errorf("ID %s", got.ID())
				}
				if err := s.Remove(context.Background(), got.ID()); err != nil {
					t.Fatal(err)
				}
				return
			}
			wantClass(t, err, "refusal", tc.class)
			if strings.Contains(err.Error(), "s3cret") {
				t.Errorf("error shows the password: %v", err)
			}
			assertEmpty(t, s, img)
		})
	}
}

func TestPullMirror(t *testing.T) {
	reg := testregistry.Start(t, testregistry.Options{})
	img, err := testimage.Tart(testimage.TartOptions{Seed: 8, DiskSize: 2 << 20, ChunkSize: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	push(t, reg, "mirrored/vm", "v1", img)

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := ln.Addr().String()
	ln.Close()

	for _, mirrors := range [][]string{{reg.Host()}, {dead, reg.Host()}} {
		t.Run(strings.Join(mirrors, ","), func(t *testing.T) {
			rc := insecure(reg.Host(), dead)
			rc["example.invalid"] = imagestore.Host{Mirrors: mirrors}
			s := newStore(t, rc)
			before := reg.Requests(img.ConfigDigest())
			got := mustPull(t, s, "example.invalid/mirrored/vm:v1", nil)
			if got.Name != "example.invalid/mirrored/vm:v1" || got.Kind != vmimage.KindTart || !s.HasBase(context.Background(), got) {
				t.Errorf("pulled %+v", got)
			}
			if reg.Requests(img.ConfigDigest()) != before+1 {
				t.Error("the config was not fetched from the mirror")
			}
			if _, err := s.Get(context.Background(), "example.invalid/mirrored/vm@"+img.Manifest.Digest.String()); err != nil {
				t.Error(err)
			}
		})
	}

	// Without a mirror, example.invalid does not resolve.
	s := newStore(t, insecure(reg.Host()))
	_, err = s.Pull(context.Background(), "example.invalid/mirrored/vm:v1", nil)
	wantClass(t, err, "Unavailable", errdefs.IsUnavailable, "example.invalid")
}

// ---- concurrency ----

func TestConcurrentPulls(t *testing.T) {
	reg := testregistry.Start(t, testregistry.Options{})
	img, err := testimage.Tart(testimage.TartOptions{Seed: 9, DiskSize: 6 << 20, ChunkSize: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	push(t, reg, "vm", "a", img)
	push(t, reg, "vm", "b", img)
	push(t, reg, "vm", "c", img)
	// Slow enough that the pulls overlap.
	reg.SlowBlobs(4 << 20)

	for _, tc := range []struct {
		name string
		refs []string
	}{
		{"same-name", []string{reg.Ref("vm", "a"), reg.Ref("vm", "a"), reg.Ref("vm", "a")}},
		{"different-names", []string{reg.Ref("vm", "b"), reg.Ref("vm", "c"), reg.Host() + "/vm@" + img.Manifest.Digest.String()}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := newStore(t, insecure(reg.Host()))
			before := map[digest.Digest]int{}
			for _, b := range img.Blobs {
				before[b.Desc.Digest] = reg.Requests(b.Desc.Digest)
			}
			var wg sync.WaitGroup
			results := make([]imagestore.Image, len(tc.refs))
			errs := make([]error, len(tc.refs))
			for i, ref := range tc.refs {
				wg.Add(1)
				go func() {
					defer wg.Done()
					results[i], errs[i] = s.Pull(context.Background(), ref, nil)
				}()
			}
			wg.Wait()
			for i, err := range errs {
				if err != nil {
					t.Fatalf("pull %s: %v", tc.refs[i], err)
				}
				if results[i].ID() != img.Manifest.Digest.String() || results[i].Config.Digest != img.ConfigDigest() {
					t.Errorf("pull %s gave %+v", tc.refs[i], results[i])
				}
			}
			for _, b := range img.Blobs {
				if n := reg.Requests(b.Desc.Digest) - before[b.Desc.Digest]; n != 1 {
					t.Errorf("blob %s (%s) fetched %d times by concurrent pulls, want 1", b.Desc.Digest, b.Desc.MediaType, n)
				}
			}
			// One committed base, no extraction left over.
			all := snaps(t, s)
			if len(all) != 1 {
				t.Errorf("snapshots: %v", all)
			}
			if _, ok := all[imagestore.BaseName(img.Manifest.Digest)]; !ok {
				t.Error("no base committed")
			}
			dir := viewBase(t, s, results[0])
			sameFile(t, filepath.Join(dir, vmimage.DiskFile), testimage.DiskPattern(9, 6<<20))
			if st := ingests(t, s); len(st) != 0 {
				t.Errorf("ingests left: %+v", st)
			}
		})
	}
}

// A caller that gives up on a pull does not fail another caller of the
// same pull.
func TestPullCancelOneOfTwo(t *testing.T) {
	reg := testregistry.Start(t, testregistry.Options{})
	img, err := testimage.Tart(testimage.TartOptions{Seed: 10, DiskSize: 4 << 20, ChunkSize: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	push(t, reg, "vm", "v1", img)
	reg.SlowBlobs(2 << 20)
	s := newStore(t, insecure(reg.Host()))

	ctx1, cancel1 := context.WithCancel(context.Background())
	defer cancel1()
	err1 := make(chan error, 1)
	go func() {
		_, err := s.Pull(ctx1, reg.Ref("vm", "v1"), nil)
		err1 <- err
	}()
	res2 := make(chan error, 1)
	go func() {
		_, err := s.Pull(context.Background(), reg.Ref("vm", "v1"), nil)
		res2 <- err
	}()
	// Cancel the first caller once the download is under way.
	if err := eventually(10*time.Second, func() bool {
		// ListStatuses fails while an ingest is being created: retry.
		sts, _ := s.Content().ListStatuses(context.Background())
		for _, st := range sts {
			if st.Offset > 0 {
				return true
			}
		}
		return false
	}); err != nil {
		t.Fatal("the download never started")
	}
	cancel1()
	select {
	case err := <-err1:
		if !errors.Is(err, context.Canceled) {
			t.Errorf("canceled pull returned %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("canceled pull did not return")
	}
	select {
	case err := <-res2:
		if err != nil {
			t.Fatalf("the other caller's pull failed: %v", err)
		}
	case <-time.After(60 * time.Second):
		t.Fatal("the other caller's pull did not finish")
	}
	got, err := s.Get(context.Background(), reg.Ref("vm", "v1"))
	if err != nil || !s.HasBase(context.Background(), got) {
		t.Fatalf("after the pull: %v, base %v", err, err == nil && s.HasBase(context.Background(), got))
	}
}

// A pull whose only caller gives up stops downloading.
func TestPullCancel(t *testing.T) {
	reg := testregistry.Start(t, testregistry.Options{})
	img, err := testimage.OCI(testimage.OCIOptions{RandomLayerSize: 2 << 20, Seed: 12})
	if err != nil {
		t.Fatal(err)
	}
	push(t, reg, "app", "v1", img)
	reg.SlowBlobs(512 << 10)
	s := newStore(t, insecure(reg.Host()))
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err = s.Pull(ctx, reg.Ref("app", "v1"), nil)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("pull past its deadline: %v", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("pull returned %v after its deadline", d)
	}
	reg.ClearFaults()
	// The download stopped and left an ingest to resume from; a pull now
	// completes.
	mustPull(t, s, reg.Ref("app", "v1"), nil)
}

// ---- interrupted downloads ----

// The fetcher reconnects with a Range request when a blob's connection is
// cut: a registry that cuts every response after n bytes still delivers.
func TestPullResumesWithinPull(t *testing.T) {
	reg := testregistry.Start(t, testregistry.Options{})
	img, err := testimage.Tart(testimage.TartOptions{Seed: 13, DiskSize: 4 << 20, ChunkSize: 4 << 20})
	if err != nil {
		t.Fatal(err)
	}
	push(t, reg, "vm", "v1", img)
	chunk := img.Parsed().Layers[1]
	if chunk.MediaType != vmimage.MediaTypeTartDiskV2 || chunk.Size < 1<<20 {
		t.Fatalf("layer 1 is %s of %d bytes", chunk.MediaType, chunk.Size)
	}
	n := int(chunk.Size/4 + 1)
	reg.TruncateAfter(chunk.Digest, n) // every response, so only Range requests can finish
	s := newStore(t, insecure(reg.Host()))
	got := mustPull(t, s, reg.Ref("vm", "v1"), nil)
	if want := int((chunk.Size + int64(n) - 1) / int64(n)); reg.Requests(chunk.Digest) != want {
		t.Errorf("%d GETs of a %d-byte blob cut every %d bytes, want %d", reg.Requests(chunk.Digest), chunk.Size, n, want)
	}
	sameFile(t, filepath.Join(viewBase(t, s, got), vmimage.DiskFile), testimage.DiskPattern(13, 4<<20))
}

// A Tart pull that fails mid-chunk keeps its unpack: the next pull
// checks the chunks the first one finished against the manifest, does not
// download them again, and downloads the cut chunk again from its start
// (disk chunks stream into the unpacker without being stored, so there is
// no partial download of them to continue). Nothing of the disk went
// through the content store.
func TestPullResumesAcrossPulls(t *testing.T) {
	reg := testregistry.Start(t, testregistry.Options{})
	disk := testimage.DiskPattern(14, 6<<20)
	img, err := testimage.Tart(testimage.TartOptions{Seed: 14, Disk: disk, ChunkSize: 3 << 20})
	if err != nil {
		t.Fatal(err)
	}
	push(t, reg, "vm", "v1", img)
	layers := img.Parsed().Layers
	first, big := layers[1], layers[2] // the two disk chunks
	if big.MediaType != vmimage.MediaTypeTartDiskV2 || big.Size < 1<<20 {
		t.Fatalf("layer 2 is %s of %d bytes", big.MediaType, big.Size)
	}
	const cut = 300 << 10
	reg.TruncateAfterTimes(big.Digest, cut, 1)

	// In front of the registry: a proxy that logs requests and, once a
	// response was cut, answers 503 until told otherwise (the registry
	// went away right after cutting the connection).
	px := startProxy(t, reg.Host())
	px.downAfterCut = true
	// The file system's free space: plenty for the first pull; for the
	// resumed one, the 1 GiB margin plus what is left to download, less
	// than the image's blobs: the finished chunk has its space already.
	var avail atomic.Uint64
	avail.Store(100 << 30)
	s := newStore(t, insecure(px.host()), func(o *imagestore.Options) {
		o.MaxConcurrentDownloads = 1 // layers in order: the cut chunk is not the first
		o.FreeSpace = func(string) (uint64, uint64, error) { return avail.Load(), 100 << 30, nil }
	})
	ref := px.host() + "/vm:v1"

	_, err = s.Pull(context.Background(), ref, nil)
	wantClass(t, err, "Unavailable", errdefs.IsUnavailable, px.host())
	if list, _ := s.List(context.Background()); len(list) != 0 {
		t.Errorf("images after the failed pull: %v", names(list))
	}
	partial := imagestore.PartialKey(img.Manifest.Digest)
	for name, info := range snaps(t, s) {
		if name != partial || info.Kind != snapshots.KindActive {
			t.Errorf("snapshot %s (%v) left after the failed pull; want only the unpack to resume, %s", name, info.Kind, partial)
		}
	}
	if _, ok := snaps(t, s)[partial]; !ok {
		t.Fatalf("the failed pull kept no unpack to resume (%s)", partial)
	}
	have := blobs(t, s)
	if !have[img.ConfigDigest()] || !have[layers[0].Digest] {
		t.Errorf("small blobs fetched before the failure were dropped: %v", have)
	}
	if have[first.Digest] || have[big.Digest] {
		t.Errorf("a disk chunk went into the content store: %v", have)
	}
	for _, st := range ingests(t, s) {
		if strings.Contains(st.Ref, first.Digest.String()) || strings.Contains(st.Ref, big.Digest.String()) {
			t.Errorf("partial download of a disk chunk: %+v", st)
		}
	}

	px.setDown(false)
	avail.Store(1<<30 + uint64(sumSizes(layers)-first.Size))
	// The resumed pull's progress: the finished chunk and the blobs
	// already stored count whole and cost nothing; the cut chunk and the
	// NVRAM after it (never reached) are downloaded whole.
	var last imagestore.Progress
	calls := 0
	got, err := s.Pull(context.Background(), ref, nil, imagestore.WithProgress(time.Millisecond, func(p imagestore.Progress) { last, calls = p, calls+1 }))
	if err != nil {
		t.Fatal(err)
	}
	sameFile(t, filepath.Join(viewBase(t, s, got), vmimage.DiskFile), disk)
	if calls == 0 || len(last.Blobs) != 1+len(layers) || last.Started.IsZero() {
		t.Fatalf("progress: %d calls, last %+v", calls, last)
	}
	for _, b := range last.Blobs {
		wantFetched := int64(0)
		if b.Digest != first.Digest && b.Digest != layers[0].Digest && b.Digest != img.ConfigDigest() {
			wantFetched = b.Size
		}
		if !b.Complete || b.Done != b.Size || b.Fetched != wantFetched {
			t.Errorf("progress of %s (%s): %+v; want complete, %d fetched", b.Digest, b.MediaType, b, wantFetched)
		}
	}
	if size, done, _ := last.Totals(); size != done || size != img.Parsed().Config.Size+sumSizes(layers) {
		t.Errorf("progress totals: size %d, done %d", size, done)
	}
	var gets []proxied
	for _, r := range px.requests() {
		if strings.HasSuffix(r.path, "/blobs/"+big.Digest.String()) && r.status/100 == 2 {
			gets = append(gets, r)
		}
	}
	if len(gets) != 2 {
		t.Fatalf("GETs of the cut blob: %+v, want 2", gets)
	}
	if gets[0].rng != "" || gets[0].bytes != cut {
		t.Errorf("first GET: %+v, want the whole blob cut at %d", gets[0], cut)
	}
	if gets[1].rng != "" || gets[1].bytes != big.Size {
		t.Errorf("second GET: %+v, want the whole blob again (%d bytes)", gets[1], big.Size)
	}
	for _, d := range []digest.Digest{first.Digest, layers[0].Digest, img.ConfigDigest()} {
		if n := reg.Requests(d); n != 1 {
			t.Errorf("%s fetched %d times across the two pulls, want 1", d, n)
		}
	}
	for name := range snaps(t, s) {
		if strings.HasPrefix(name, "macvz.extract/") {
			t.Errorf("unpack %s left after the pull finished", name)
		}
	}
	if st := ingests(t, s); len(st) != 0 {
		t.Errorf("ingests left: %+v", st)
	}
}

// What an interrupted unpack finished is checked again before a retry
// counts it: a chunk whose bytes changed on disk since (a crash lost its
// pages, or anything else wrote there) is downloaded again, and the disk
// comes out right; stale bytes of the chunk cut mid-way do not survive in
// its holes.
func TestPullResumeChecksFinishedChunks(t *testing.T) {
	ctx := context.Background()
	reg := testregistry.Start(t, testregistry.Options{})
	// Chunk 0 is data, chunk 1 zeros (all holes in a good unpack), chunk
	// 2 data again: the cut one.
	disk := append(append(testimage.DiskPattern(41, 1<<20), make([]byte, 1<<20)...), testimage.DiskPattern(42, 1<<20)...)
	img, err := testimage.Tart(testimage.TartOptions{Seed: 41, Disk: disk, ChunkSize: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	push(t, reg, "vm", "v1", img)
	layers := img.Parsed().Layers
	c0, c1, c2 := layers[1], layers[2], layers[3]
	for _, c := range []ocispec.Descriptor{c0, c1, c2} {
		if c.MediaType != vmimage.MediaTypeTartDiskV2 {
			t.Fatalf("layers: %+v", layers)
		}
	}
	s, px, ref := interruptedPull(t, reg, c2)

	// Damage what the first pull finished: a byte of chunk 0, and data
	// where chunk 1's zeros are; the cut chunk 2 holds half its data.
	mounts, err := s.sn.Mounts(ctx, imagestore.PartialKey(img.Manifest.Digest))
	if err != nil {
		t.Fatal(err)
	}
	dir, err := snapshotter.Dir(mounts)
	if err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(filepath.Join(dir, vmimage.DiskFile), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt([]byte{0xff}, 12345); err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt(bytes.Repeat([]byte{7}, 4096), 1<<20+8192); err != nil {
		t.Fatal(err)
	}
	f.Close()

	px.setDown(false)
	before := map[digest.Digest]int{}
	for _, c := range []ocispec.Descriptor{c0, c1, c2} {
		before[c.Digest] = reg.Requests(c.Digest)
	}
	got := mustPull(t, s, ref, nil)
	sameFile(t, filepath.Join(viewBase(t, s, got), vmimage.DiskFile), disk)
	for _, c := range []ocispec.Descriptor{c0, c1, c2} {
		if n := reg.Requests(c.Digest) - before[c.Digest]; n != 1 {
			t.Errorf("chunk %s fetched %d times by the retry, want 1 (each was damaged or unfinished)", c.Digest, n)
		}
	}
}

// interruptedPull pulls vm:v1 from reg through a proxy, one layer at a
// time, and has the registry go away halfway through blob cut: the pull
// fails as the network does, and the proxy stays down until setDown(false).
func interruptedPull(t *testing.T, reg *testregistry.Registry, cut ocispec.Descriptor) (*testStore, *proxy, string) {
	t.Helper()
	reg.TruncateAfterTimes(cut.Digest, int(cut.Size/2), 1)
	px := startProxy(t, reg.Host())
	px.downAfterCut = true
	s := newStore(t, insecure(px.host()), func(o *imagestore.Options) { o.MaxConcurrentDownloads = 1 })
	ref := px.host() + "/vm:v1"
	if _, err := s.Pull(context.Background(), ref, nil); !errdefs.IsUnavailable(err) {
		t.Fatalf("pull through a registry that went away: %v", err)
	}
	return s, px, ref
}

// An interrupted unpack no pull came back for is dropped by Collect once
// it is old, as partial downloads are; a fresh one is kept, across a
// restart of the store too. A pull that fails for a reason other than the
// network keeps nothing.
func TestPartialUnpackExpires(t *testing.T) {
	ctx := context.Background()
	reg := testregistry.Start(t, testregistry.Options{})
	img, err := testimage.Tart(testimage.TartOptions{Seed: 43, DiskSize: 3 << 20, ChunkSize: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	push(t, reg, "vm", "v1", img)
	c2 := img.Parsed().Layers[3]
	s, px, ref := interruptedPull(t, reg, c2)
	partial := imagestore.PartialKey(img.Manifest.Digest)
	has := func() bool { _, ok := snaps(t, s)[partial]; return ok }
	if err := s.Collect(ctx); err != nil {
		t.Fatal(err)
	}
	if !has() {
		t.Fatal("Collect dropped a fresh interrupted unpack")
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s2, err := imagestore.Open(ctx, imagestore.Options{Root: filepath.Join(s.root, "images"), Snapshotter: s.sn, Hosts: insecure(px.host())})
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	if !has() {
		t.Fatal("reopening the store dropped a fresh interrupted unpack")
	}
	restore := imagestore.SetIngestExpiry(0)
	defer restore()
	if err := s2.Collect(ctx); err != nil {
		t.Fatal(err)
	}
	if has() {
		t.Fatal("Collect kept an expired interrupted unpack")
	}
	restore()

	// A chunk that fails verification: DataLoss, and no unpack kept.
	px.setDown(false)
	reg.CorruptBlob(c2.Digest)
	_, err = s2.Pull(ctx, ref, nil)
	reg.ClearFaults()
	wantClass(t, err, "DataLoss", errdefs.IsDataLoss, c2.Digest.String())
	if has() {
		t.Error("a pull that failed verification kept its unpack")
	}
	if _, err := s2.Pull(ctx, ref, nil); err != nil {
		t.Fatal(err)
	}
	if has() {
		t.Error("a finished pull left its unpack")
	}
}

func discardLogger() *log.Logger { return log.New(io.Discard, "", 0) }

type proxied struct {
	method, path, rng string
	status            int
	bytes             int64
}

type proxy struct {
	target       string
	ln           net.Listener
	tr           *http.Transport
	downAfterCut bool

	mu   sync.Mutex
	log  []proxied
	down bool
}

func startProxy(t testing.TB, target string) *proxy {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &proxy{target: target, ln: ln, tr: &http.Transport{Proxy: nil}}
	srv := &http.Server{Handler: p, ErrorLog: discardLogger()}
	go srv.Serve(ln)
	t.Cleanup(func() {
		srv.Close()
		p.tr.CloseIdleConnections()
	})
	return p
}

func (p *proxy) host() string { return p.ln.Addr().String() }

func (p *proxy) setDown(v bool) {
	p.mu.Lock()
	p.down = v
	p.mu.Unlock()
}

func (p *proxy) requests() []proxied {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]proxied(nil), p.log...)
}

func (p *proxy) record(r proxied) {
	p.mu.Lock()
	p.log = append(p.log, r)
	p.mu.Unlock()
}

func (p *proxy) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	p.mu.Lock()
	down := p.down
	p.mu.Unlock()
	if down {
		p.record(proxied{r.Method, r.URL.Path, r.Header.Get("Range"), http.StatusServiceUnavailable, 0})
		http.Error(w, "down", http.StatusServiceUnavailable)
		return
	}
	out := r.Clone(r.Context())
	out.RequestURI = ""
	out.URL.Scheme, out.URL.Host = "http", p.target
	resp, err := p.tr.RoundTrip(out)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadGateway)
		return
	}
	defer resp.Body.Close()
	for k, v := range resp.Header {
		w.Header()[k] = v
	}
	w.WriteHeader(resp.StatusCode)
	n, err := io.Copy(w, resp.Body)
	p.record(proxied{r.Method, r.URL.Path, r.Header.Get("Range"), resp.StatusCode, n})
	if err != nil {
		if p.downAfterCut {
			p.setDown(true)
		}
		panic(http.ErrAbortHandler) // cut the client's connection too
	}
}

// Partial downloads a failed pull kept for its retry are dropped by
// Collect once they are old and no pull holds them.
func TestCollectExpiresPartialDownloads(t *testing.T) {
	reg := testregistry.Start(t, testregistry.Options{})
	img, err := testimage.OCI(testimage.OCIOptions{RandomLayerSize: 2 << 20, Seed: 15})
	if err != nil {
		t.Fatal(err)
	}
	push(t, reg, "app", "v1", img)
	reg.SlowBlobs(1 << 20)
	s := newStore(t, insecure(reg.Host()))
	ctx, cancel := context.WithTimeout(context.Background(), 400*time.Millisecond)
	defer cancel()
	if _, err := s.Pull(ctx, reg.Ref("app", "v1"), nil); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("pull past its deadline: %v", err)
	}
	reg.ClearFaults()
	partial := func() int {
		sts, err := s.Content().ListStatuses(context.Background())
		if err != nil {
			return -1
		}
		return len(sts)
	}
	if err := eventually(5*time.Second, func() bool { return partial() > 0 }); err != nil {
		t.Fatal("the interrupted pull left no partial download")
	}
	if err := s.Collect(context.Background()); err != nil {
		t.Fatal(err)
	}
	if partial() == 0 {
		t.Fatal("Collect dropped a fresh partial download")
	}
	restore := imagestore.SetIngestExpiry(0)
	defer restore()
	if err := eventually(5*time.Second, func() bool {
		if err := s.Collect(context.Background()); err != nil {
			t.Fatal(err)
		}
		return partial() == 0
	}); err != nil {
		t.Fatalf("Collect kept %d expired partial downloads", partial())
	}
	restore()
	mustPull(t, s, reg.Ref("app", "v1"), nil)
}

// TestPullReleasesDiskChunks: by default a VM image's disk chunks leave
// the content store once its base is unpacked and verified (after the
// pull returns: mustPull waits for that; its config,
// NVRAM and manifest stay); a re-pull with the base there fetches no
// chunk; a lost base is pulled again, chunks and all, and they are
// released again; an interrupted pull keeps its partial chunks and
// resumes them.
func TestPullReleasesDiskChunks(t *testing.T) {
	ctx := context.Background()
	reg := testregistry.Start(t, testregistry.Options{})
	disk := testimage.DiskPattern(31, 6<<20+777)
	img, err := testimage.Tart(testimage.TartOptions{Seed: 31, Disk: disk, ChunkSize: 1 << 20, NVRAM: randomBytes(32, 64<<10)})
	if err != nil {
		t.Fatal(err)
	}
	push(t, reg, "vm", "v1", img)
	s := newStore(t, insecure(reg.Host()))
	got := mustPull(t, s, reg.Ref("vm", "v1"), nil)
	present := func(d digest.Digest) bool {
		_, err := s.Content().Info(ctx, d)
		return err == nil
	}
	chunks := 0
	for _, l := range img.Parsed().Layers {
		if vmimage.IsDiskLayer(l.MediaType) {
			chunks++
			if present(l.Digest) {
				t.Errorf("disk chunk %s still stored after the base was unpacked", l.Digest)
			}
		} else if !present(l.Digest) {
			t.Errorf("layer %s (%s) released; only disk chunks go", l.Digest, l.MediaType)
		}
	}
	if chunks < 2 || !present(got.Manifest.Digest) || !present(got.Config.Digest) {
		t.Fatalf("%d chunks; manifest stored %v, config %v", chunks, present(got.Manifest.Digest), present(got.Config.Digest))
	}
	sameFile(t, filepath.Join(viewBase(t, s, got), vmimage.DiskFile), disk)

	requests := func() map[digest.Digest]int {
		m := map[digest.Digest]int{}
		for _, b := range img.Blobs {
			m[b.Desc.Digest] = reg.Requests(b.Desc.Digest)
		}
		return m
	}
	before := requests()
	mustPull(t, s, reg.Ref("vm", "v1"), nil)
	for d, n := range requests() {
		if n != before[d] {
			t.Errorf("a re-pull with the base there fetched %s again", d)
		}
	}

	// The base lost: the pull fetches the chunks again, unpacks, and
	// releases them.
	loseBase(t, s, got)
	mustPull(t, s, reg.Ref("vm", "v1"), nil)
	if !s.HasBase(ctx, got) {
		t.Fatal("the re-pull did not unpack the base again")
	}
	for _, l := range img.Parsed().Layers {
		if vmimage.IsDiskLayer(l.MediaType) && present(l.Digest) {
			t.Errorf("disk chunk %s kept after the second unpack", l.Digest)
		}
	}
}

func sumSizes(ds []ocispec.Descriptor) (n int64) {
	seen := map[digest.Digest]bool{}
	for _, d := range ds {
		if !seen[d.Digest] {
			seen[d.Digest] = true
			n += d.Size
		}
	}
	return n
}

// loseBase removes an image's unpacked base (and the test's views of
// it), as if it were lost.
func loseBase(t *testing.T, s *testStore, img imagestore.Image) {
	t.Helper()
	ctx := context.Background()
	for name := range snaps(t, s) {
		if strings.HasPrefix(name, "test-view-") {
			if err := s.sn.Remove(ctx, name); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := s.sn.Remove(ctx, imagestore.BaseName(img.Manifest.Digest)); err != nil {
		t.Fatal(err)
	}
}

// DropInterruptedPulls (macvz image prune) removes what an interrupted
// pull kept, fresh or not: a Tart image's unpack and a partial download
// (the NVRAM layer cut mid-way, after every chunk was unpacked); the next
// pull starts over.
func TestDropInterruptedPulls(t *testing.T) {
	ctx := context.Background()
	reg := testregistry.Start(t, testregistry.Options{})
	img, err := testimage.Tart(testimage.TartOptions{Seed: 44, DiskSize: 3 << 20, ChunkSize: 1 << 20, NVRAM: randomBytes(45, 256<<10)})
	if err != nil {
		t.Fatal(err)
	}
	push(t, reg, "vm", "v1", img)
	layers := img.Parsed().Layers
	nvram := layers[len(layers)-1]
	if nvram.MediaType != vmimage.MediaTypeTartNVRAM {
		t.Fatalf("last layer: %s", nvram.MediaType)
	}
	s, px, ref := interruptedPull(t, reg, nvram)
	partial := imagestore.PartialKey(img.Manifest.Digest)
	if _, ok := snaps(t, s)[partial]; !ok {
		t.Fatal("no unpack kept")
	}
	if len(ingests(t, s)) != 1 {
		t.Fatalf("partial downloads: %+v, want the NVRAM's", ingests(t, s))
	}
	if n := s.DropInterruptedPulls(ctx); n != 2 {
		t.Errorf("DropInterruptedPulls removed %d, want 2", n)
	}
	if _, ok := snaps(t, s)[partial]; ok {
		t.Error("the unpack is still there")
	}
	if st := ingests(t, s); len(st) != 0 {
		t.Errorf("partial downloads left: %+v", st)
	}
	if n := s.DropInterruptedPulls(ctx); n != 0 {
		t.Errorf("a second DropInterruptedPulls removed %d", n)
	}
	px.setDown(false)
	before := reg.Requests(layers[1].Digest)
	mustPull(t, s, ref, nil)
	if reg.Requests(layers[1].Digest) != before+1 {
		t.Error("the pull after the drop did not download the first chunk again")
	}
}

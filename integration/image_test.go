package integration

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/macvz/macvz/integration/testimage"
	"github.com/macvz/macvz/integration/testregistry"
	"github.com/macvz/macvz/vmimage"
)

// criImage is the part of crictl's JSON output the tests read.
type criImage struct {
	ID          string   `json:"id"`
	RepoTags    []string `json:"repoTags"`
	RepoDigests []string `json:"repoDigests"`
	Size        string   `json:"size"`
	UID         *struct {
		Value string `json:"value"`
	} `json:"uid"`
	Username string `json:"username"`
}

func (d *daemon) images() []criImage {
	d.t.Helper()
	var out struct {
		Images []criImage `json:"images"`
	}
	if err := json.Unmarshal([]byte(d.mustCrictl("images", "-o", "json")), &out); err != nil {
		d.t.Fatal(err)
	}
	return out.Images
}

func (d *daemon) findImage(tag string) (criImage, bool) {
	for _, img := range d.images() {
		for _, t := range img.RepoTags {
			if t == tag {
				return img, true
			}
		}
	}
	return criImage{}, false
}

// push builds and pushes img or fails the test.
func push(t *testing.T, r *testregistry.Registry, repo string, img testimage.Image, tags ...string) testimage.Image {
	t.Helper()
	for _, tag := range tags {
		if err := r.Push(context.Background(), repo, tag, img); err != nil {
			t.Fatal(err)
		}
	}
	return img
}

// wantFail runs crictl expecting failure with a gRPC code and words in
// the message.
func (d *daemon) wantFail(code string, words []string, args ...string) {
	d.t.Helper()
	out, err := d.crictl(args...)
	if err == nil {
		d.t.Fatalf("crictl %s succeeded, want %s:\n%s", strings.Join(args, " "), code, out)
	}
	if !strings.Contains(out, "code = "+code) {
		d.t.Errorf("crictl %s: want code %s, got:\n%s", strings.Join(args, " "), code, out)
	}
	for _, w := range words {
		if !strings.Contains(out, w) {
			d.t.Errorf("crictl %s: message does not mention %q:\n%s", strings.Join(args, " "), w, out)
		}
	}
}

// TestImageService drives the real daemon's ImageService with the real
// crictl against real registries on 127.0.0.1.
func TestImageService(t *testing.T) {
	requireCrictl(t)
	mk := built(t)
	open := testregistry.Start(t, testregistry.Options{})
	private := testregistry.Start(t, testregistry.Options{Username: "ci", Password: "s3cret-pw"})

	app := push(t, open, "library/app", mk(testimage.OCI(testimage.OCIOptions{Seed: 1, User: "1234"})), "v1", "v2", "latest")
	named := push(t, open, "library/named", mk(testimage.OCI(testimage.OCIOptions{Seed: 2, User: "nobody"})), "1")
	push(t, private, "team/secret", mk(testimage.OCI(testimage.OCIOptions{Seed: 3})), "1")
	tart := push(t, open, "vm/tart", mk(testimage.Tart(testimage.TartOptions{Seed: 4, DiskSize: 24 << 20, ChunkSize: 8 << 20})), "15")
	push(t, open, "vm/agoda", mk(testimage.Agoda(testimage.AgodaOptions{Seed: 5})), "1")
	push(t, open, "vm/linux", mk(testimage.Linux(testimage.LinuxOptions{
		Kernel: []byte("kernel"), Initrd: []byte("initrd"), MinCPUs: 1, MinMemoryBytes: 128 << 20,
		Process: &vmimage.Process{Cmd: []string{"/bin/sh"}, User: "root"},
	})), "1")
	_ = named

	d := startDaemon(t, fmt.Sprintf(`
[registry.hosts.%[1]q]
insecure = true
[registry.hosts.%[2]q]
insecure = true
[registry.hosts."registry.k8s.io"]
mirrors = [%[1]q]
`, open.Host(), private.Host()))

	t.Run("version and status", func(t *testing.T) {
		out := d.mustCrictl("version")
		for _, w := range []string{"RuntimeName:  macvz", "RuntimeApiVersion:  v1"} {
			if !strings.Contains(out, w) {
				t.Errorf("crictl version lacks %q:\n%s", w, out)
			}
		}
		var info struct {
			Status struct {
				Conditions []struct {
					Type   string `json:"type"`
					Status bool   `json:"status"`
					Reason string `json:"reason"`
				} `json:"conditions"`
			} `json:"status"`
		}
		if err := json.Unmarshal([]byte(d.mustCrictl("info")), &info); err != nil {
			t.Fatal(err)
		}
		got := map[string]bool{}
		for _, c := range info.Status.Conditions {
			got[c.Type] = c.Status
			// The harness gives the daemon an empty network directory.
			if c.Type == "NetworkReady" && c.Reason != "NoNetworkConfig" {
				t.Errorf("NetworkReady reason %q, want NoNetworkConfig", c.Reason)
			}
		}
		if !got["RuntimeReady"] || got["NetworkReady"] {
			t.Errorf("conditions %+v: want RuntimeReady true, NetworkReady false", info.Status.Conditions)
		}
		// Every RuntimeService verb is implemented: an unknown object is
		// NotFound, not the generated "method not implemented".
		rc := d.runtimeClient(t)
		_, err := rc.CheckpointContainer(context.Background(), &runtimeapi.CheckpointContainerRequest{ContainerId: "x"})
		if status.Code(err) != codes.NotFound {
			t.Errorf("CheckpointContainer of an unknown container: %v, want NotFound", err)
		}
		_, err = rc.UpdatePodSandboxResources(context.Background(), &runtimeapi.UpdatePodSandboxResourcesRequest{PodSandboxId: "x", Resources: &runtimeapi.LinuxContainerResources{}})
		if status.Code(err) != codes.NotFound {
			t.Errorf("UpdatePodSandboxResources of an unknown sandbox: %v, want NotFound", err)
		}
	})

	t.Run("pull list inspect", func(t *testing.T) {
		ref := open.Ref("library/app", "v1")
		out := d.mustCrictl("pull", ref)
		id := app.ConfigDigest().String()
		if !strings.Contains(out, id) {
			t.Errorf("pull printed %q, want image id %s", out, id)
		}
		d.mustCrictl("pull", open.Ref("library/app", "v2"))
		img, ok := d.findImage(open.Ref("library/app", "v2"))
		if !ok {
			t.Fatalf("v2 not listed: %+v", d.images())
		}
		if img.ID != id || len(img.RepoTags) != 2 || len(img.RepoDigests) != 1 {
			t.Errorf("image %+v: want id %s with two tags and one digest", img, id)
		}
		if want := open.Host() + "/library/app@" + app.Manifest.Digest.String(); img.RepoDigests[0] != want {
			t.Errorf("repo digest %s, want %s", img.RepoDigests[0], want)
		}
		if img.Size == "" || img.Size == "0" {
			t.Errorf("size %q", img.Size)
		}
		if img.UID == nil || img.UID.Value != "1234" || img.Username != "" {
			t.Errorf("User 1234: uid %+v username %q", img.UID, img.Username)
		}
		d.mustCrictl("pull", open.Ref("library/named", "1"))
		if img, _ := d.findImage(open.Ref("library/named", "1")); img.Username != "nobody" || img.UID != nil {
			t.Errorf("User nobody: uid %+v username %q", img.UID, img.Username)
		}
		// `crictl images <repo>` filters.
		if out := d.mustCrictl("images", open.Host()+"/library/named"); strings.Contains(out, "library/app") || !strings.Contains(out, "library/named") {
			t.Errorf("filtered images:\n%s", out)
		}
		var st struct {
			Status criImage                   `json:"status"`
			Info   map[string]json.RawMessage `json:"info"`
		}
		if err := json.Unmarshal([]byte(d.mustCrictl("inspecti", "-o", "json", ref)), &st); err != nil {
			t.Fatal(err)
		}
		if st.Status.ID != id {
			t.Errorf("inspecti id %s want %s", st.Status.ID, id)
		}
	})

	t.Run("credentials", func(t *testing.T) {
		ref := private.Ref("team/secret", "1")
		d.wantFail("Unauthenticated", []string{private.Host()}, "pull", ref)
		out, err := d.crictl("pull", "--creds", "ci:wrong", ref)
		if err == nil || !(strings.Contains(out, "Unauthenticated") || strings.Contains(out, "PermissionDenied")) {
			t.Errorf("wrong password: %v\n%s", err, out)
		}
		d.mustCrictl("pull", "--creds", "ci:s3cret-pw", ref)
		if _, ok := d.findImage(ref); !ok {
			t.Error("private image not listed after pull with credentials")
		}
		// The secret never reaches the daemon's log.
		if strings.Contains(d.log.String(), "s3cret-pw") {
			t.Error("password appears in the daemon log")
		}
	})

	t.Run("mirror", func(t *testing.T) {
		ref := "registry.k8s.io/library/app:latest"
		d.mustCrictl("pull", ref)
		img, ok := d.findImage(ref)
		if !ok || img.ID != app.ConfigDigest().String() {
			t.Fatalf("mirrored pull not listed under its upstream name: %+v", d.images())
		}
	})

	t.Run("vm images", func(t *testing.T) {
		for _, repo := range []string{"vm/tart:15", "vm/agoda:1", "vm/linux:1"} {
			ref := open.Host() + "/" + repo
			d.mustCrictl("pull", ref)
			// crictl lifts the JSON object under our "info" key into its
			// own "info" field.
			var st struct {
				Info struct {
					Kind     string `json:"kind"`
					Bootable bool   `json:"bootable"`
				} `json:"info"`
			}
			if err := json.Unmarshal([]byte(d.mustCrictl("inspecti", "-o", "json", ref)), &st); err != nil {
				t.Fatal(err)
			}
			info := st.Info
			if info.Kind == "" || !info.Bootable {
				t.Errorf("%s: info %+v, want a bootable VM image", repo, info)
			}
		}
		// The Tart disk was unpacked once into a committed base.
		bases, _ := filepath.Glob(filepath.Join(d.root(), "snapshots", "*"))
		if len(bases) == 0 {
			t.Errorf("no snapshot data under %s", d.root())
		}
		_ = tart
	})

	t.Run("imagefsinfo", func(t *testing.T) {
		var fs struct {
			Status struct {
				ImageFilesystems []struct {
					UsedBytes struct {
						Value string `json:"value"`
					} `json:"usedBytes"`
					InodesUsed struct {
						Value string `json:"value"`
					} `json:"inodesUsed"`
					FsID struct {
						Mountpoint string `json:"mountpoint"`
					} `json:"fsId"`
				} `json:"imageFilesystems"`
			} `json:"status"`
		}
		out := d.mustCrictl("imagefsinfo", "-o", "json")
		if err := json.Unmarshal([]byte(out), &fs); err != nil {
			t.Fatalf("%v\n%s", err, out)
		}
		if len(fs.Status.ImageFilesystems) == 0 {
			t.Fatalf("no image filesystem:\n%s", out)
		}
		f := fs.Status.ImageFilesystems[0]
		if f.UsedBytes.Value == "" || f.UsedBytes.Value == "0" || f.InodesUsed.Value == "" || f.InodesUsed.Value == "0" {
			t.Errorf("usage not reported: %s", out)
		}
		if !strings.HasPrefix(f.FsID.Mountpoint, d.root()) {
			t.Errorf("mountpoint %q is not under %s", f.FsID.Mountpoint, d.root())
		}
	})

	t.Run("remove", func(t *testing.T) {
		d.mustCrictl("rmi", open.Ref("library/app", "v1"))
		if _, ok := d.findImage(open.Ref("library/app", "v2")); ok {
			t.Error("rmi by tag left the image's other tags (containerd removes the image)")
		}
		d.mustCrictl("rmi", named.ConfigDigest().String())
		if _, ok := d.findImage(open.Ref("library/named", "1")); ok {
			t.Error("rmi by id left the image")
		}
		ref := open.Host() + "/vm/tart@" + tart.Manifest.Digest.String()
		d.mustCrictl("rmi", ref)
		if _, ok := d.findImage(open.Ref("vm/tart", "15")); ok {
			t.Error("rmi by digest left the image")
		}
		// Removing what is gone: crictl reports the image missing; the
		// RPC itself is idempotent (unit-tested in cri/).
		if out, err := d.crictl("rmi", open.Ref("vm/tart", "15")); err == nil {
			t.Errorf("crictl rmi of a removed image succeeded:\n%s", out)
		}
	})

	t.Run("bad input", func(t *testing.T) {
		d.wantFail("InvalidArgument", []string{"Not//Valid"}, "pull", "Not//Valid:tag")
		d.wantFail("NotFound", []string{"library/app:nope"}, "pull", open.Ref("library/app", "nope"))

		// A manifest of a media type nobody knows, and a corrupt one.
		open.ServeManifest("weird/odd", "1", "application/vnd.example.odd.v1+json", []byte(`{"schemaVersion":2}`))
		out, err := d.crictl("pull", open.Ref("weird/odd", "1"))
		if err == nil || !strings.Contains(out, "application/vnd.example.odd.v1+json") {
			t.Errorf("unknown manifest media type: %v\n%s", err, out)
		}
		open.ServeManifest("weird/corrupt", "1", "application/vnd.oci.image.manifest.v1+json", []byte(`{"schemaVersion":2,"layers":[`))
		out, err = d.crictl("pull", open.Ref("weird/corrupt", "1"))
		if err == nil || !strings.Contains(out, "application/vnd.oci.image.manifest.v1+json") {
			t.Errorf("corrupt manifest: %v\n%s", err, out)
		}

		// A blob whose bytes do not match its digest.
		bad := push(t, open, "broken/blob", mk(testimage.OCI(testimage.OCIOptions{Seed: 40, RandomLayerSize: 1 << 20})), "1")
		layer := bad.Parsed().Layers[len(bad.Parsed().Layers)-1].Digest
		open.CorruptBlob(layer)
		out, err = d.crictl("pull", open.Ref("broken/blob", "1"))
		if err == nil || !strings.Contains(out, layer.Encoded()[:12]) && !strings.Contains(strings.ToLower(out), "digest") {
			t.Errorf("corrupt blob: %v\n%s", err, out)
		}
		if _, ok := d.findImage(open.Ref("broken/blob", "1")); ok {
			t.Error("image with a corrupt blob is listed")
		}
		if blobExists(d.root(), layer.Encoded()) {
			t.Error("corrupt blob stored in the content store")
		}

		// A truncated Apple-LZ4 chunk: the pull fails and no base is made.
		trunc := push(t, open, "broken/tart", mk(testimage.Tart(testimage.TartOptions{Seed: 41, DiskSize: 16 << 20, ChunkSize: 8 << 20, TruncateChunks: []int{1}})), "1")
		out, err = d.crictl("pull", open.Ref("broken/tart", "1"))
		if err == nil {
			t.Errorf("truncated LZ4 chunk pulled:\n%s", out)
		}
		if _, ok := d.findImage(open.Ref("broken/tart", "1")); ok {
			t.Error("image with a truncated chunk is listed")
		}
		if hasBase(d.root(), trunc.Manifest.Digest.Encoded()) {
			t.Error("a base was committed for the truncated image")
		}

		// An ASIF Tart disk is refused by name.
		push(t, open, "vm/asif", mk(testimage.Tart(testimage.TartOptions{Seed: 42, DiskFormat: "asif"})), "1")
		out, err = d.crictl("pull", open.Ref("vm/asif", "1"))
		if err == nil || !strings.Contains(out, "asif") {
			t.Errorf("ASIF disk: %v\n%s", err, out)
		}

		// A registry that is down: Unavailable, naming the host.
		gone := testregistry.Start(t, testregistry.Options{})
		host := gone.Host()
		gone.Stop()
		d.wantFail("Unavailable", []string{host}, "pull", host+"/library/app:v1")
	})
}

// built fails the test when an image builder failed.
func built(t *testing.T) func(testimage.Image, error) testimage.Image {
	return func(img testimage.Image, err error) testimage.Image {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		return img
	}
}

// blobExists reports whether the content store under root holds a blob.
func blobExists(root, hex string) bool {
	found := false
	filepath.WalkDir(root, func(p string, e os.DirEntry, err error) error {
		if err == nil && e.Name() == hex && strings.Contains(p, "blobs") {
			found = true
		}
		return nil
	})
	return found
}

// hasBase reports whether a committed base for a manifest exists, by its
// snapshot key in the snapshotter's metadata.
func hasBase(root, manifestHex string) bool {
	found := false
	filepath.WalkDir(filepath.Join(root, "snapshots"), func(p string, e os.DirEntry, err error) error {
		if err == nil && strings.Contains(e.Name(), manifestHex) {
			found = true
		}
		return nil
	})
	return found
}

// writeJSON writes v to a temporary file for crictl's config arguments.
func writeJSON(t *testing.T, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(t.TempDir(), "config.json")
	if err := os.WriteFile(p, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

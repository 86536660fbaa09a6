package integration

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/macvz/macvz/integration/guest"
	"github.com/macvz/macvz/integration/testimage"
	"github.com/macvz/macvz/vmimage"
)

// TestImageImportPush: `macvz image import` and `push` through the real
// daemon and the test registry.
//
//   - A Tart VM directory (a 600 MiB sparse disk: two of Tart's 512 MiB
//     chunks) is imported with plain progress lines; `macvz image ls`
//     lists it as a Tart image.
//   - It is pushed in Tart's format (the registry's manifest has the VM
//     config layer, two disk.v2 chunks with their annotations, the NVRAM,
//     the disk size annotation), the chunks made again from the unpacked
//     disk (keep_disk_chunks is false); a second push uploads nothing.
//   - A second daemon with an empty root pulls it: the same image ID and
//     a disk with the same digest as the directory's.
//   - push REF DIR imports the directory under REF and pushes it.
//   - An OCI image layout holding the test guest is imported and a pod
//     runs from it at once, with no registry involved.
func TestImageImportPush(t *testing.T) {
	v := newVMTest(t)
	d := v.d
	run := func(args ...string) (string, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		cmd := exec.CommandContext(ctx, macvzBin, append(args, "--config", d.configPath())...)
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	mustRun := func(args ...string) string {
		t.Helper()
		out, err := run(args...)
		if err != nil {
			t.Fatalf("macvz %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return out
	}

	const chunk = 512 << 20
	vm, err := testimage.TartDir(71, "darwin", chunk+88<<20, map[int64][]byte{
		1 << 20:            testimage.DiskPattern(71, 2<<20),
		chunk - 4096:       testimage.DiskPattern(72, 8192), // across the chunk boundary
		chunk + 80<<20:     testimage.DiskPattern(73, 1<<20),
		chunk + 88<<20 - 5: []byte("end!!"),
	})
	if err != nil {
		t.Fatal(err)
	}
	src := t.TempDir()
	if err := vm.Write(src); err != nil {
		t.Fatal(err)
	}
	diskDigest := fileDigest(t, filepath.Join(src, vmimage.DiskFile))

	local := "localhost/imported/tart:1"
	out := mustRun("image", "import", src, local)
	lines := strings.Split(strings.TrimSpace(out), "\n")
	result := regexp.MustCompile(`^imported ` + regexp.QuoteMeta(local) + ` \(([0-9a-f]{13})\) in [0-9.]+m?s: 600MiB, 600MiB read$`)
	m := result.FindStringSubmatch(lines[len(lines)-1])
	if m == nil {
		t.Fatalf("import's last line %q", lines[len(lines)-1])
	}
	for _, l := range lines[:len(lines)-1] {
		if !strings.HasPrefix(l, local+": ") {
			t.Errorf("an import progress line %q", l)
		}
	}
	t.Logf("macvz image import:\n%s", out)
	ls := mustRun("image", "ls")
	if !regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(local) + `\s+` + m[1] + `\s+tart\s`).MatchString(ls) {
		t.Errorf("macvz image ls does not list the imported image %s as tart:\n%s", m[1], ls)
	}
	t.Logf("macvz image ls:\n%s", ls)
	var inspected struct {
		ID string `json:"id"`
	}
	if err := json.Unmarshal([]byte(mustRun("image", "inspect", local)), &inspected); err != nil {
		t.Fatal(err)
	}
	id := inspected.ID
	t.Logf("imported %s: %s", local, id)

	target := v.reg.Host() + "/roundtrip/tart:1"
	out = mustRun("image", "push", target, local)
	t.Logf("macvz image push:\n%s", out)
	if !strings.Contains(out, "manifest "+id+"; 6 blobs uploaded") || !strings.Contains(out, "pushed "+target) {
		t.Errorf("push output: want the manifest %s and 6 blobs uploaded (config, VM config, 2 chunks, NVRAM, manifest):\n%s", id, out)
	}
	out = mustRun("image", "push", target, local)
	if !strings.Contains(out, "0 blobs uploaded (0B), 6 already in the registry") {
		t.Errorf("a second push: want nothing uploaded:\n%s", out)
	}

	// What the registry holds is Tart's format.
	man := registryManifest(t, v.reg.URL()+"/v2/roundtrip/tart/manifests/1")
	var kinds []string
	for _, l := range man.Layers {
		kinds = append(kinds, l.MediaType)
		if l.MediaType == vmimage.MediaTypeTartDiskV2 && (l.Annotations[vmimage.AnnotationTartUncompressedSize] == "" || l.Annotations[vmimage.AnnotationTartUncompressedDigest] == "") {
			t.Errorf("chunk %s without Tart's annotations: %v", l.Digest, l.Annotations)
		}
	}
	want := []string{vmimage.MediaTypeTartConfig, vmimage.MediaTypeTartDiskV2, vmimage.MediaTypeTartDiskV2, vmimage.MediaTypeTartNVRAM}
	if strings.Join(kinds, " ") != strings.Join(want, " ") || man.Annotations[vmimage.AnnotationTartUncompressedDiskSize] != "629145600" {
		t.Errorf("pushed manifest: layers %v, annotations %v", kinds, man.Annotations)
	}

	// Pulled into an empty root: the same image, the same disk.
	d2 := startDaemon(t, "[registry.hosts.\""+v.reg.Host()+"\"]\ninsecure = true\n")
	pulled, err := exec.Command(macvzBin, "image", "pull", "-q", target, "--config", d2.configPath()).CombinedOutput()
	if err != nil || strings.TrimSpace(string(pulled)) != id {
		t.Fatalf("pulling the pushed image: %v %s; want %s", err, pulled, id)
	}
	disks := filesNamed(t, d2.root(), vmimage.DiskFile)
	if len(disks) != 1 || fileDigest(t, disks[0]) != diskDigest {
		t.Errorf("the pulled disk(s) %v; want one with the directory's digest %s", disks, diskDigest)
	}

	// push REF DIR: imported under REF, then pushed.
	direct := v.reg.Host() + "/direct/tart:1"
	out = mustRun("image", "push", direct, src)
	if !strings.Contains(out, "manifest "+id+"; 6 blobs uploaded") {
		t.Errorf("push of a directory: want the same image %s pushed:\n%s", id, out)
	}

	// An OCI layout: the test guest, imported and run with no registry.
	imgs, err := guestImages()
	if err != nil {
		t.Fatal(err)
	}
	layout := t.TempDir()
	if err := testimage.WriteLayout(layout, map[string]testimage.Image{guest.RefPlain: imgs[guest.RefPlain], guest.RefHTTPD: imgs[guest.RefHTTPD]}); err != nil {
		t.Fatal(err)
	}
	guestRef := "localhost/layout/guest:" + guest.RefPlain
	out = mustRun("image", "import", "-q", layout, guestRef)
	if strings.TrimSpace(out) != imgs[guest.RefPlain].Manifest.Digest.String() {
		t.Errorf("import -q of the layout: %q, want the plain guest's ID %s", out, imgs[guest.RefPlain].Manifest.Digest)
	}
	podCfg := v.podConfig(t, "imported", nil)
	pod := v.runPod(t, podCfg)
	defer d.crictl("rmp", "-f", pod)
	ctr := v.startCtr(t, pod, v.ctrConfig(t, "sh", guestRef, map[string]any{"command": []string{"sleep", "3600"}}), podCfg)
	if got := v.execOut(t, ctr, "echo", "from-an-imported-image"); got != "from-an-imported-image" {
		t.Errorf("exec in the pod of the imported image: %q", got)
	}
	if out, err := run("image", "import", layout, "localhost/layout/guest:none"); err == nil || !strings.Contains(out, "none is named") {
		t.Errorf("importing a name the layout lacks: %v\n%s", err, out)
	}
}

func fileDigest(t testing.TB, path string) string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(h.Sum(nil))
}

// filesNamed lists the regular files called name under root.
func filesNamed(t testing.TB, root, name string) []string {
	t.Helper()
	var out []string
	filepath.WalkDir(root, func(p string, e os.DirEntry, err error) error {
		if err == nil && e.Type().IsRegular() && e.Name() == name {
			out = append(out, p)
		}
		return nil
	})
	return out
}

func registryManifest(t testing.TB, url string) ocispec.Manifest {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, url, nil)
	req.Header.Set("Accept", ocispec.MediaTypeImageManifest)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var m ocispec.Manifest
	if err := json.NewDecoder(resp.Body).Decode(&m); err != nil {
		t.Fatalf("manifest at %s: %v", url, err)
	}
	return m
}

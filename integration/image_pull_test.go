package integration

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/macvz/macvz/integration/testimage"
	"github.com/macvz/macvz/integration/testregistry"
	"github.com/macvz/macvz/vmimage"
)

// TestImagePullCLI: `macvz image pull` through the real daemon from a
// registry that wants credentials. Without them the pull fails with the
// registry's refusal; with Docker's config.json it pulls, printing plain
// progress lines and the result; --creds --quiet prints the ID alone; a
// VM image's disk chunks are released after the pull
// (image.keep_disk_chunks false), and a re-pull downloads nothing; a
// pull interrupted (the CLI killed) resumes in the next one, which
// downloads only the rest; on a terminal (tmux) the progress block is
// redrawn and ends with the result.
func TestImagePullCLI(t *testing.T) {
	mk := built(t)
	reg := testregistry.Start(t, testregistry.Options{Username: "puller", Password: "pull-s3cret"})
	img := push(t, reg, "vm/tart", mk(testimage.Tart(testimage.TartOptions{Seed: 61, DiskSize: 24 << 20, ChunkSize: 2 << 20})), "1", "2", "3")
	push(t, reg, "vm/tart", mk(testimage.Tart(testimage.TartOptions{Seed: 62, DiskSize: 24 << 20, ChunkSize: 2 << 20})), "4")
	crashed := push(t, reg, "vm/tart", mk(testimage.Tart(testimage.TartOptions{Seed: 63, DiskSize: 24 << 20, ChunkSize: 2 << 20})), "5")
	push(t, reg, "vm/tart", mk(testimage.Tart(testimage.TartOptions{Seed: 64, DiskSize: 24 << 20, ChunkSize: 2 << 20})), "6")
	d := startDaemon(t, "[registry.hosts.\""+reg.Host()+"\"]\ninsecure = true\n")
	ref := func(tag string) string { return reg.Host() + "/vm/tart:" + tag }
	pull := func(env []string, args ...string) (string, string, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		cmd := exec.CommandContext(ctx, macvzBin, append(append([]string{"image", "pull"}, args...), "--config", d.configPath())...)
		cmd.Env = append(os.Environ(), env...)
		var o, e strings.Builder
		cmd.Stdout, cmd.Stderr = &o, &e
		err := cmd.Run()
		return o.String(), e.String(), err
	}
	noDocker := "DOCKER_CONFIG=" + t.TempDir()
	// midPull runs a pull of tag through a registry slowed to 512 KiB/s,
	// 3 s into which interrupt stops it somehow; it returns the CLI's
	// output and exit error.
	midPull := func(tag string, interrupt func(*exec.Cmd)) (string, error) {
		reg.SlowBlobs(512 << 10)
		defer reg.SlowBlobs(0)
		cmd := exec.Command(macvzBin, "image", "pull", "--creds", "puller:pull-s3cret", ref(tag), "--config", d.configPath())
		cmd.Env = append(os.Environ(), noDocker)
		var out strings.Builder
		cmd.Stdout, cmd.Stderr = &out, &out
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		time.Sleep(3 * time.Second)
		interrupt(cmd)
		err := cmd.Wait()
		return out.String(), err
	}
	sigint := func(c *exec.Cmd) { c.Process.Signal(syscall.SIGINT) }

	// No credentials: the registry's refusal, exit 1.
	if out, stderr, err := pull([]string{noDocker}, ref("1")); err == nil || !strings.Contains(out+stderr, "failed") {
		t.Errorf("a pull without credentials: %v\n%s%s", err, out, stderr)
	}

	// Docker's config.json names the registry.
	dockerDir := t.TempDir()
	auths := fmt.Sprintf(`{"auths": {%q: {"username": "puller", "password": "pull-s3cret"}}}`, reg.Host())
	if err := os.WriteFile(filepath.Join(dockerDir, "config.json"), []byte(auths), 0o600); err != nil {
		t.Fatal(err)
	}
	out, stderr, err := pull([]string{"DOCKER_CONFIG=" + dockerDir}, ref("1"))
	if err != nil {
		t.Fatalf("macvz image pull with Docker's config: %v\n%s%s", err, out, stderr)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	size := humanBytes(img)
	result := regexp.MustCompile(`^pulled ` + regexp.QuoteMeta(ref("1")) + ` \(([0-9a-f]{13})\) in [0-9.]+m?s: ` + regexp.QuoteMeta(size) + `, ` + regexp.QuoteMeta(size) + ` downloaded$`)
	if m := result.FindStringSubmatch(lines[len(lines)-1]); m == nil || !strings.HasPrefix(img.Manifest.Digest.Encoded(), m[1]) {
		t.Errorf("the pull's last line %q; want the image %s and %s downloaded", lines[len(lines)-1], img.Manifest.Digest, size)
	}
	progress := regexp.MustCompile(`^` + regexp.QuoteMeta(ref("1")) + `: (resolving|[0-9.]+[KMG]?i?B of [0-9.]+[KMG]?i?B \([0-9]+%\), [0-9]+ of [0-9]+ blobs, [0-9.]+[KMG]?i?B/s)`)
	for _, l := range lines[:len(lines)-1] {
		if !progress.MatchString(l) {
			t.Errorf("a progress line %q", l)
		}
	}
	if len(lines) < 2 {
		t.Errorf("no progress line before the result:\n%s", out)
	}
	t.Logf("macvz image pull (plain):\n%s", out)

	// The disk chunks leave the content store; the rest stays. The daemon
	// releases them after the pull has returned (releaseDiskChunksLater), so
	// the test gives it a while before it looks for the last time.
	blob := func(dg string) bool {
		_, err := os.Stat(filepath.Join(d.root(), "images", "content", "blobs", "sha256", strings.TrimPrefix(dg, "sha256:")))
		return err == nil
	}
	wrong := func() []string {
		var w []string
		for _, l := range img.Parsed().Layers {
			if stored := blob(l.Digest.String()); vmimage.IsDiskLayer(l.MediaType) == stored {
				w = append(w, fmt.Sprintf("layer %s (%s): stored %v after the pull", l.Digest, l.MediaType, stored))
			}
		}
		return w
	}
	for deadline := time.Now().Add(20 * time.Second); len(wrong()) > 0 && time.Now().Before(deadline); {
		time.Sleep(100 * time.Millisecond)
	}
	for _, w := range wrong() {
		t.Error(w)
	}

	// Again, by --creds, quietly: the ID alone, nothing downloaded.
	before := reg.Requests(img.Parsed().Layers[1].Digest)
	out, stderr, err = pull([]string{noDocker}, "--creds", "puller:pull-s3cret", "--quiet", ref("1"))
	if err != nil || strings.TrimSpace(out) != img.Manifest.Digest.String() {
		t.Errorf("pull --quiet: %v %q %s", err, out, stderr)
	}
	if after := reg.Requests(img.Parsed().Layers[1].Digest); after != before {
		t.Errorf("a re-pull downloaded a disk chunk again (%d → %d GETs)", before, after)
	}
	// A password left out of --creds is read from stdin.
	cmd := exec.Command(macvzBin, "image", "pull", "--creds", "puller", "-q", ref("2"), "--config", d.configPath())
	cmd.Env = append(os.Environ(), noDocker)
	cmd.Stdin = strings.NewReader("pull-s3cret\n")
	if o, err := cmd.CombinedOutput(); err != nil || !strings.Contains(string(o), img.Manifest.Digest.String()) {
		t.Errorf("--creds without a password, the password on stdin: %v %s", err, o)
	}

	// Interrupted: a slow registry, the CLI killed midway; the next pull
	// resumes and downloads less than the image.
	if err := exec.Command(macvzBin, "image", "rm", ref("1"), "--config", d.configPath()).Run(); err != nil {
		t.Fatalf("macvz image rm: %v", err)
	}
	slowOut, err := midPull("3", sigint)
	if err == nil || !strings.Contains(slowOut, "interrupted") {
		t.Errorf("the interrupted pull: %v, %q; want a failure saying it was interrupted", err, slowOut)
	}
	out, stderr, err = pull([]string{noDocker}, "--creds", "puller:pull-s3cret", ref("3"))
	if err != nil {
		t.Fatalf("the pull after an interrupted one: %v\n%s%s\n(interrupted: %s)", err, out, stderr, slowOut)
	}
	last := strings.Split(strings.TrimSpace(out), "\n")
	m := regexp.MustCompile(`: (\S+), (\S+) downloaded$`).FindStringSubmatch(last[len(last)-1])
	if m == nil || m[2] == m[1] {
		t.Errorf("the resumed pull: %q; want less downloaded than the image (interrupted run: %s)", last[len(last)-1], slowOut)
	}
	t.Logf("interrupted:\n%sresumed: %s", slowOut, last[len(last)-1])
	// A Tart image's chunks stream into its unpack, which the
	// interrupted pull kept: the next one resumes it by chunk.
	if !regexp.MustCompile(`resuming an interrupted unpack.* layers=[1-9]`).MatchString(d.log.String()) {
		t.Errorf("the daemon's log has no resumed unpack with finished chunks:\n%s", d.log.String())
	}

	// The daemon killed mid-pull (SIGKILL): the unpack it kept survives
	// its restart, and the next pull resumes it by chunk, each finished
	// chunk checked again, and comes out whole.
	midPull("5", func(*exec.Cmd) { d.crash() })
	mark := len(d.log.String())
	out, stderr, err = pull([]string{noDocker}, "--creds", "puller:pull-s3cret", ref("5"))
	if err != nil {
		t.Fatalf("the pull after the daemon was killed mid-pull: %v\n%s%s", err, out, stderr)
	}
	last = strings.Split(strings.TrimSpace(out), "\n")
	if m := regexp.MustCompile(`: (\S+), (\S+) downloaded$`).FindStringSubmatch(last[len(last)-1]); m == nil || m[2] == m[1] {
		t.Errorf("the pull after the crash: %q; want less downloaded than the image", last[len(last)-1])
	}
	if after := d.log.String()[mark:]; !regexp.MustCompile(`resuming an interrupted unpack.* layers=[1-9]`).MatchString(after) {
		t.Errorf("the restarted daemon did not resume the killed one's unpack:\n%s", after)
	}
	if o, err := exec.Command(macvzBin, "image", "inspect", ref("5"), "--config", d.configPath()).CombinedOutput(); err != nil || !strings.Contains(string(o), crashed.Manifest.Digest.Encoded()) {
		t.Errorf("macvz image inspect after the resumed pull: %v\n%s", err, o)
	}
	t.Logf("after the daemon was killed mid-pull: %s", last[len(last)-1])

	// What an interrupted pull kept goes with macvz image prune.
	midPull("6", sigint)
	mark = len(d.log.String())
	pruned := mustAdminCLI(t, d, "image", "prune")
	summary := strings.Split(strings.TrimSpace(pruned), "\n")
	if !regexp.MustCompile(`^removed [0-9]+ images and ([0-9]+ partial downloads of interrupted pulls|1 partial download of an interrupted pull), freed [0-9.]+[KMG]i?B$`).MatchString(summary[len(summary)-1]) {
		t.Errorf("macvz image prune after an interrupted pull:\n%s", pruned)
	}
	if after := d.log.String()[mark:]; !strings.Contains(after, "removing an interrupted unpack no pull resumed") {
		t.Errorf("prune did not remove the interrupted pull's unpack:\n%s", after)
	}
	t.Logf("macvz image prune after an interrupted pull: %s", summary[len(summary)-1])

	// On a terminal: the block is drawn in place and ends with the result.
	reg.SlowBlobs(1 << 20)
	defer reg.SlowBlobs(0)
	tm := newTmux(t, 120, 30, "sh", "-c", fmt.Sprintf("DOCKER_CONFIG=%s %s image pull %s --config %s; echo exit=$?; sleep 60", dockerDir, macvzBin, ref("4"), d.configPath()))
	tm.waitScreen(" disk   [")
	t.Logf("on a terminal, midway:\n%s", strings.TrimRight(tm.screen(), "\n "))
	tm.waitScreen("exit=0")
	screen := tm.screen()
	t.Logf("on a terminal:\n%s", strings.TrimRight(screen, "\n "))
	if !strings.Contains(screen, "pulled "+ref("4")) || strings.Contains(screen, "\x1b") || strings.Count(screen, ref("4")+": ") != 1 {
		t.Errorf("the terminal after the pull:\n%s", screen)
	}
}

// humanBytes is an image's blobs' size as the CLI prints it.
func humanBytes(img testimage.Image) string {
	var n int64
	seen := map[string]bool{}
	m := img.Parsed()
	for _, d := range append(m.Layers, m.Config) {
		if !seen[d.Digest.String()] {
			seen[d.Digest.String()] = true
			n += d.Size
		}
	}
	if n < 1024 {
		return fmt.Sprintf("%dB", n)
	}
	v, u := float64(n), -1
	units := []string{"KiB", "MiB", "GiB"}
	for v >= 1024 && u < len(units)-1 {
		v /= 1024
		u++
	}
	return strings.TrimSuffix(fmt.Sprintf("%.1f", v), ".0") + units[u]
}

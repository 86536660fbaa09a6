//go:build linux

package integration

import (
	"bufio"
	"context"
	"encoding/xml"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/macvz/macvz/vmimage"

	"github.com/macvz/macvz/integration/guest"
	"github.com/macvz/macvz/integration/nettest"
	"github.com/macvz/macvz/integration/testimage"
	"github.com/macvz/macvz/integration/testregistry"
	"github.com/macvz/macvz/integration/testutil"
)

// TestCritest runs critest (cri-tools v1.37.0) against the real daemon
// with the QEMU backend, in a network namespace with the bridge-tap pod
// network. The images critest pulls keep their upstream names: the test
// registry serves them through macvz's registry mirrors. Specs listed in
// critest/skip.txt are skipped (each with its reason); any other spec
// that fails fails the test. `make critest` runs only this.
func TestCritest(t *testing.T) {
	critest := os.Getenv("CRITEST")
	if critest == "" {
		_, self, _, _ := runtime.Caller(0)
		critest = filepath.Join(filepath.Dir(self), "tools", "bin", "critest")
	}
	if _, err := os.Stat(critest); err != nil {
		testutil.Unavailable(t, "needs critest at %s: run `make tools`", critest)
	}
	nettest.Require(t)
	bin, err := netPlugins()
	if err != nil {
		t.Fatalf("building the CNI plugins: %v", err)
	}
	imgs, err := guestImages()
	if err != nil {
		t.Fatalf("building the test guest: %v", err)
	}
	ns := nettest.NewNetNS(t, "critest")
	reg := testregistry.Start(t, testregistry.Options{})
	pushCritestImages(t, reg, imgs)
	ln, err := ns.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	mirror := reg.ServeOn(ln)

	confDir := bridgeTapConf(t, t.TempDir())
	var mirrors strings.Builder
	for _, host := range []string{"registry.k8s.io", "gcr.io", "k8s.gcr.io"} {
		fmt.Fprintf(&mirrors, "[registry.hosts.%q]\nmirrors = [%q]\n\n", host, mirror)
	}
	fmt.Fprintf(&mirrors, "[registry.hosts.%q]\ninsecure = true\n", mirror)
	d := startDaemonIn(t, ns.Name, fmt.Sprintf(`[qemu]
accel = "tcg"

[network]
conf_dir = %q
bin_dirs = [%q]

%s`, confDir, bin, mirrors.String()))

	// Specs that fail half way can leave pods: their VMs must not
	// outlive the test (shims are built to survive the daemon).
	d.removePodsAtEnd(t)
	skips := readSkips(t)
	report := filepath.Join(t.TempDir(), "junit.xml")
	args := []string{"netns", "exec", ns.Name, critest,
		"--runtime-endpoint", "unix://" + d.socket, "--image-endpoint", "unix://" + d.socket,
		"--ginkgo.junit-report", report, "--ginkgo.no-color", "--ginkgo.timeout", "50m"}
	bench := os.Getenv("CRITEST_BENCHMARK_DIR")
	if bench != "" {
		// critest's pod and container lifecycle benchmarks (make bench),
		// sized for a 2-core machine running TCG guests.
		if err := os.MkdirAll(bench, 0o755); err != nil {
			t.Fatal(err)
		}
		params := filepath.Join(t.TempDir(), "params.yaml")
		os.WriteFile(params, []byte("containersNumber: 10\ncontainersNumberParallel: 1\ncontainerBenchmarkTimeoutSeconds: 300\n"+
			"podsNumber: 10\npodsNumberParallel: 1\npodBenchmarkTimeoutSeconds: 300\n"+
			"imagesNumber: 5\nimagesNumberParallel: 1\nimageBenchmarkTimeoutSeconds: 300\n"+
			"imagePullingBenchmarkImage: gcr.io/k8s-staging-cri-tools/test-image-latest:latest\n"+
			"imageListingBenchmarkImages:\n"+
			"- gcr.io/k8s-staging-cri-tools/test-image-1:latest\n"+
			"- gcr.io/k8s-staging-cri-tools/test-image-2:latest\n"+
			"- gcr.io/k8s-staging-cri-tools/test-image-3:latest\n"), 0o644)
		args = append(args, "-benchmark", "-benchmarking-output-dir", bench, "-benchmarking-params-file", params)
	} else {
		args = append(args, "--ginkgo.skip", skipRegexp(skips))
	}
	if f := os.Getenv("CRITEST_FOCUS"); f != "" {
		args = append(args, "--ginkgo.focus", f)
	}
	if os.Getenv("CRITEST_VERBOSE") != "" {
		// Each spec's name and outcome, passed ones too (in CRITEST_LOG).
		args = append(args, "--ginkgo.v")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 55*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "ip", args...)
	out, _ := cmd.StdoutPipe()
	cmd.Stderr = cmd.Stdout
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	// The whole output goes to CRITEST_LOG when set; the test log gets
	// ginkgo's summary (from "Summarizing N Failures" on, or the last
	// lines), which has each failure's reason.
	var logf io.Writer = io.Discard
	if p := os.Getenv("CRITEST_LOG"); p != "" {
		f, err := os.Create(p)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		logf = f
	}
	var all []string
	sc := bufio.NewScanner(out)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		fmt.Fprintln(logf, sc.Text())
		all = append(all, sc.Text())
	}
	runErr := cmd.Wait()
	from := max(0, len(all)-8)
	for i, l := range all {
		if strings.HasPrefix(l, "Summarizing ") {
			from = i
			break
		}
	}
	t.Logf("critest summary:\n%s", strings.Join(all[from:], "\n"))

	passed, failed, skipped := readJUnit(t, report)
	t.Logf("critest: %d passed, %d failed, %d skipped (skip list: %d entries)", len(passed), len(failed), len(skipped), len(skips))
	for _, f := range failed {
		t.Errorf("critest spec failed (not in critest/skip.txt): %s", f)
	}
	if runErr != nil && len(failed) == 0 {
		t.Errorf("critest: %v (no failed spec in the report)", runErr)
	}
}

// skip is one line of critest/skip.txt: a spec name (a substring of the
// full spec text) and why it is skipped.
type skip struct{ spec, reason string }

func readSkips(t *testing.T) []skip {
	t.Helper()
	_, self, _, _ := runtime.Caller(0)
	f, err := os.Open(filepath.Join(filepath.Dir(self), "critest", "skip.txt"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []skip
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		l := strings.TrimSpace(sc.Text())
		if l == "" || strings.HasPrefix(l, "#") {
			continue
		}
		spec, reason, ok := strings.Cut(l, " -- ")
		if !ok || strings.TrimSpace(reason) == "" {
			t.Fatalf("critest/skip.txt: %q has no reason (`spec -- reason`)", l)
		}
		out = append(out, skip{strings.TrimSpace(spec), strings.TrimSpace(reason)})
	}
	return out
}

func skipRegexp(skips []skip) string {
	var parts []string
	for _, s := range skips {
		parts = append(parts, regexp.QuoteMeta(s.spec))
	}
	if len(parts) == 0 {
		return "^$"
	}
	return strings.Join(parts, "|")
}

// readJUnit returns the names of passed, failed and skipped specs.
func readJUnit(t *testing.T, path string) (passed, failed, skipped []string) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("critest wrote no report: %v", err)
	}
	var r struct {
		Suites []struct {
			Cases []struct {
				Name    string    `xml:"name,attr"`
				Status  string    `xml:"status,attr"`
				Failure *struct{} `xml:"failure"`
				Error   *struct{} `xml:"error"`
				Skipped *struct{} `xml:"skipped"`
			} `xml:"testcase"`
		} `xml:"testsuite"`
	}
	if err := xml.Unmarshal(b, &r); err != nil {
		t.Fatal(err)
	}
	for _, s := range r.Suites {
		for _, c := range s.Cases {
			switch {
			case c.Failure != nil || c.Error != nil:
				failed = append(failed, c.Name)
			case c.Skipped != nil:
				skipped = append(skipped, c.Name)
			default:
				passed = append(passed, c.Name)
			}
		}
	}
	sort.Strings(failed)
	return passed, failed, skipped
}

// pushCritestImages pushes what critest pulls, under the upstream
// repository names (the mirror keeps the path): the test guests stand in
// for busybox, nginx and httpd; ordinary OCI images for the cri-tools
// test images, with the User their specs check.
func pushCritestImages(t *testing.T, reg *testregistry.Registry, guests map[string]testimage.Image) {
	t.Helper()
	ctx := context.Background()
	mk := built(t)
	put := func(repo, tag string, img testimage.Image) {
		t.Helper()
		if err := reg.Push(ctx, repo, tag, img); err != nil {
			t.Fatalf("pushing %s:%s: %v", repo, tag, err)
		}
	}
	put("e2e-test-images/busybox", "1.29-2", guests[guest.RefPlain])
	// nginx: httpd on port 80 whose command line, like nginx's, says
	// "master process" (the PID namespace specs look for it in
	// /proc/1/cmdline); the realm (-r) is unused without an httpd.conf.
	put("e2e-test-images/nginx", "1.14-2", guestVariant(t, guests[guest.RefPlain], "", &vmimage.Process{
		Entrypoint: []string{"/bin/sh", "-c"},
		Cmd:        []string{"echo nginx stand-in on port 80; exec /bin/busybox httpd -f -v -p 80 -h /www -r 'nginx stand-in: master process'"},
		Env:        []string{"PATH=/bin"},
		WorkingDir: "/",
		User:       "0",
	}))
	put("e2e-test-images/httpd", "2.4.39-4", guests[guest.RefHTTPD])
	// pause holds a sandbox and does nothing: a VM image with no default
	// process, whose container stands for the VM itself.
	put("pause", "3.9", guestVariant(t, guests[guest.RefPlain], "macvz.test-image=pause", nil))
	// nonewprivs runs a setuid-root binary that prints its effective uid.
	put("e2e-test-images/nonewprivs", "1.3", guestVariant(t, guests[guest.RefPlain], "", &vmimage.Process{
		Entrypoint: []string{"/bin/euid"}, Env: []string{"PATH=/bin"},
	}))
	// hostnet-nginx serves on port 12003 (cri-tools' images/hostnet-nginx).
	put("k8s-staging-cri-tools/hostnet-nginx-"+runtime.GOARCH, "latest", guestVariant(t, guests[guest.RefPlain], "", &vmimage.Process{
		Entrypoint: []string{"/bin/sh", "-c"},
		Cmd:        []string{"echo nginx stand-in on port 12003; exec /bin/busybox httpd -f -p 12003 -h /www"},
		Env:        []string{"PATH=/bin"},
	}))
	const staging = "k8s-staging-cri-tools/"
	for i, u := range []struct{ repo, user string }{
		{"test-image-user-uid", "1002"},
		{"test-image-user-username", "www-data"},
		{"test-image-user-uid-group", "1003:1004"},
		{"test-image-user-username-group", "www-data:1004"},
	} {
		put(staging+u.repo, "latest", mk(testimage.OCI(testimage.OCIOptions{Seed: uint64(110 + i), User: u.user, Env: []string{"IMAGE=" + u.repo}})))
	}
	put(staging+"test-image-latest", "latest", mk(testimage.OCI(testimage.OCIOptions{Seed: 120, Env: []string{"IMAGE=test-image-latest"}})))
	// test-image-tag runs containers (the image-identifier specs): a VM
	// image, the plain guest under another identity.
	tagged := guestVariant(t, guests[guest.RefPlain], "macvz.test-image=tag", nil)
	put(staging+"test-image-tag", "test", tagged)
	put(staging+"test-image-tag", "all", tagged)
	// test-image-predefined-group: runs containers and is mounted as an
	// image volume (its initramfs is its root): cri-tools' image has
	// default-user (1000) in group-defined-in-image (50000).
	put(staging+"test-image-predefined-group", "latest", guestWithFiles(t, guests[guest.RefPlain], map[string]string{
		"/etc/passwd": "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\ndefault-user:x:1000:1000:default-user:/home/default-user:/bin/sh\n",
		"/etc/group":  "root:x:0:\nnobody:x:65534:\nnogroup:x:65534:\ndefault-user:x:1000:\ngroup-defined-in-image:x:50000:default-user\n",
	}))
	for i := 1; i <= 3; i++ {
		put(fmt.Sprintf("%stest-image-%d", staging, i), "latest", mk(testimage.OCI(testimage.OCIOptions{Seed: uint64(130 + i), Env: []string{fmt.Sprintf("IMAGE=test-image-%d", i)}})))
	}
	tags := mk(testimage.OCI(testimage.OCIOptions{Seed: 140, Env: []string{"IMAGE=test-image-tags"}}))
	for i := 1; i <= 3; i++ {
		put(staging+"test-image-tags", fmt.Sprint(i), tags)
	}
}

// guestParts are a test guest image's kernel and initramfs.
func guestParts(base testimage.Image) (kernel, initrd []byte) {
	for _, b := range base.Blobs {
		switch b.Desc.MediaType {
		case vmimage.MediaTypeLinuxKernel:
			kernel = b.Data
		case vmimage.MediaTypeLinuxInitrd:
			initrd = b.Data
		}
	}
	return kernel, initrd
}

// guestWithFiles is a test guest image whose initramfs has files added
// or replaced (a second archive after the first: a different VM).
func guestWithFiles(t *testing.T, base testimage.Image, files map[string]string) testimage.Image {
	t.Helper()
	kernel, initrd := guestParts(base)
	more, err := guest.AppendFiles(initrd, files)
	if err != nil {
		t.Fatal(err)
	}
	img, err := testimage.Linux(testimage.LinuxOptions{
		Kernel: kernel, Initrd: more, KernelCmdline: guest.DefaultCmdline,
		MinCPUs: guest.MinCPUs, MinMemoryBytes: guest.MinMemoryBytes,
	})
	if err != nil {
		t.Fatal(err)
	}
	return img
}

// guestVariant is a test guest image with another kernel command line
// suffix and default process: the same kernel and initrd, so the same VM.
func guestVariant(t *testing.T, base testimage.Image, cmdlineExtra string, proc *vmimage.Process) testimage.Image {
	t.Helper()
	kernel, initrd := guestParts(base)
	cmdline := guest.DefaultCmdline
	if cmdlineExtra != "" {
		cmdline += " " + cmdlineExtra
	}
	img, err := testimage.Linux(testimage.LinuxOptions{
		Kernel: kernel, Initrd: initrd, KernelCmdline: cmdline, Process: proc,
		MinCPUs: guest.MinCPUs, MinMemoryBytes: guest.MinMemoryBytes,
	})
	if err != nil {
		t.Fatal(err)
	}
	return img
}

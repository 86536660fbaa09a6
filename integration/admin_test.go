package integration

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/macvz/macvz/internal/logbuf"
)

// adminCLI runs the real `macvz args... --config` against daemon d:
// stdout, and stderr apart (where an error goes).
func adminCLI(t *testing.T, d *daemon, args ...string) (stdout, stderr string, err error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var o, e bytes.Buffer
	cmd := exec.CommandContext(ctx, macvzBin, append(args, "--config", d.configPath())...)
	cmd.Stdout, cmd.Stderr = &o, &e
	err = cmd.Run()
	return o.String(), e.String(), err
}

func mustAdminCLI(t *testing.T, d *daemon, args ...string) string {
	t.Helper()
	out, stderr, err := adminCLI(t, d, args...)
	if err != nil {
		t.Fatalf("macvz %s: %v\n%s%s", strings.Join(args, " "), err, out, stderr)
	}
	return out
}

// tableRows splits a table into its rows' fields (every cell is one
// field or "-"), the header first.
func tableRows(out string) [][]string {
	var rows [][]string
	for _, l := range strings.Split(strings.TrimRight(out, "\n"), "\n") {
		rows = append(rows, strings.Fields(l))
	}
	return rows
}

var humanSizeRE = regexp.MustCompile(`^[0-9]+(\.[0-9])?(B|KiB|MiB|GiB|TiB)$`)

// TestAdminCLI: the operator's commands against the real daemon on
// QEMU. The admin socket is root's (0600); with a pod running from the
// plain guest, `macvz vm ls|inspect|console` show its VM, `macvz image
// ls|inspect` its image with sizes and user, `image rm` of it is
// refused (FailedPrecondition's message, exit 1); after the pod is gone
// `image prune` removes both guest images and says how much it freed,
// and `image ls` and crictl see none. A daemon without a node VM, an
// unknown pod or image, and a daemon not running are clear errors.
func TestAdminCLI(t *testing.T) {
	v := newVMTest(t)
	d := v.d

	sock := filepath.Join(d.state, "admin.sock")
	fi, err := os.Lstat(sock)
	if err != nil {
		t.Fatal(err)
	}
	if st := fi.Sys().(*syscall.Stat_t); fi.Mode()&os.ModeSocket == 0 || fi.Mode().Perm() != 0o600 || st.Uid != 0 || st.Gid != 0 {
		t.Errorf("admin socket %s: mode %v, owner %d:%d; want a socket, 0600, root:root", sock, fi.Mode(), st.Uid, st.Gid)
	}
	if _, stderr, err := adminCLI(t, d, "node", "status"); err == nil || !strings.Contains(stderr, "no node VM: [node] enabled is false") {
		t.Errorf("macvz node status without a node VM: %v, %q", err, stderr)
	}

	podCfg := v.podConfig(t, "admin", nil)
	pod := v.runPod(t, podCfg)
	ctr := v.startCtr(t, pod, v.ctrConfig(t, "app", v.plain, map[string]any{
		"command": []string{"/bin/sh", "-c", "trap 'exit 0' TERM; while :; do sleep 1; done"},
	}), podCfg)

	// vm ls: the header and the pod's VM, every cell filled.
	out := mustAdminCLI(t, d, "vm", "ls")
	t.Logf("macvz vm ls:\n%s", out)
	rows := tableRows(out)
	wantHeader := "SANDBOX ID POD BACKEND IMAGE STATE IP CPUS MEMORY UPTIME BOOT SLOT"
	if len(rows) != 2 || strings.Join(rows[0], " ") != wantHeader {
		t.Fatalf("macvz vm ls:\n%s", out)
	}
	r := rows[1]
	if len(r) != 11 || r[0] != pod[:13] || r[1] != "macvz-test/admin" || r[2] != "qemu" || r[3] != v.plain || r[4] != "running" ||
		!humanSizeRE.MatchString(r[7]) || r[8] == "-" || (r[9] != "cold" && r[9] != "warm") || r[10] != "linux/1" {
		t.Errorf("macvz vm ls row %q", r)
	}
	var vms []struct {
		SandboxID, Pod, Namespace, Backend, Image, State, Boot, OS string
		CPUs                                                       int
		MemoryBytes, UptimeSeconds                                 int64
		Slot                                                       int
	}
	if err := json.Unmarshal([]byte(mustAdminCLI(t, d, "vm", "ls", "-o", "json")), &vms); err != nil {
		t.Fatal(err)
	}
	if len(vms) != 1 || vms[0].SandboxID != pod || vms[0].Pod != "admin" || vms[0].Namespace != "macvz-test" || vms[0].State != "running" ||
		vms[0].CPUs < 1 || vms[0].MemoryBytes < 64<<20 || vms[0].Slot != 1 || vms[0].OS != "linux" || vms[0].Boot != r[9] {
		t.Errorf("macvz vm ls -o json: %+v", vms)
	}

	// vm inspect by namespace/name: the shim's pid (alive), its socket,
	// the spec it runs.
	out = mustAdminCLI(t, d, "vm", "inspect", "macvz-test/admin")
	t.Logf("macvz vm inspect macvz-test/admin:\n%s", out)
	fields := map[string]string{}
	head, spec, ok := strings.Cut(out, "spec (the VM spec the shim runs):\n")
	if !ok {
		t.Fatalf("macvz vm inspect has no spec:\n%s", out)
	}
	var sockets []string
	for _, l := range strings.Split(strings.TrimSpace(head), "\n") {
		k, val, _ := strings.Cut(l, "  ")
		k, val = strings.TrimSpace(k), strings.TrimSpace(val)
		if k == "sockets" || k == "" {
			sockets = append(sockets, val)
			continue
		}
		fields[k] = val
	}
	stateDir := filepath.Join(d.state, "sandboxes", pod)
	pid, _ := strconv.Atoi(fields["shim pid"])
	if fields["sandbox"] != pod || fields["pod"] != "macvz-test/admin" || !strings.HasPrefix(fields["state"], "running") || fields["directory"] != stateDir ||
		fields["console log"] != filepath.Join(stateDir, "console.log") || pid <= 0 || syscall.Kill(pid, 0) != nil {
		t.Errorf("macvz vm inspect: %q\n%s", fields, out)
	}
	hasShimSock := false
	for _, s := range sockets {
		hasShimSock = hasShimSock || s == filepath.Join(stateDir, "shim.sock")
	}
	if !hasShimSock {
		t.Errorf("macvz vm inspect: sockets %q, want the shim's", sockets)
	}
	var vmSpec struct {
		ID   string `json:"id"`
		CPUs int    `json:"cpus"`
	}
	if err := json.Unmarshal([]byte(spec), &vmSpec); err != nil || vmSpec.ID != pod || vmSpec.CPUs != vms[0].CPUs {
		t.Errorf("macvz vm inspect's spec: %+v, %v\n%s", vmSpec, err, spec)
	}

	// vm console by ID prefix: the console log as the VM wrote it (not
	// a terminal: unchanged). A kernel message at alert level reaches
	// the console whatever the guest's quiet loglevel.
	v.execOut(t, ctr, "sh", "-c", "echo '<1>macvz-admin-console-marker' > /dev/kmsg")
	logPath := filepath.Join(d.state, "sandboxes", pod, "console.log")
	waitFor(t, "the marker in the console log", time.Minute, func() bool {
		b, _ := os.ReadFile(logPath)
		return bytes.Contains(b, []byte("macvz-admin-console-marker"))
	})
	before, _ := os.ReadFile(logPath)
	out = mustAdminCLI(t, d, "vm", "console", pod[:10])
	after, _ := os.ReadFile(logPath)
	if !strings.HasPrefix(out, string(before)) || !strings.HasPrefix(string(after), out) {
		t.Errorf("macvz vm console printed %d bytes, not the console log's %d:\n%.2000s", len(out), len(before), out)
	}
	// vm console -f follows until the pod is removed.
	follow := exec.Command(macvzBin, "vm", "console", "-f", pod, "--config", d.configPath())
	followOut := &logbuf.Buffer{}
	follow.Stdout, follow.Stderr = followOut, followOut
	if err := follow.Start(); err != nil {
		t.Fatal(err)
	}
	followDone := make(chan error, 1)
	go func() { followDone <- follow.Wait() }()
	defer follow.Process.Kill()
	waitFor(t, "macvz vm console -f printing the log", time.Minute, func() bool {
		return strings.Contains(followOut.String(), "macvz-admin-console-marker")
	})
	// What the VM writes next comes too.
	v.execOut(t, ctr, "sh", "-c", "echo '<1>macvz-admin-console-later' > /dev/kmsg")
	waitFor(t, "macvz vm console -f printing what the VM wrote next", time.Minute, func() bool {
		return strings.Contains(followOut.String(), "macvz-admin-console-later")
	})

	// image ls: one row per name (a pull by tag records the digest
	// too); the plain guest used by the pod.
	out = mustAdminCLI(t, d, "image", "ls")
	t.Logf("macvz image ls:\n%s", out)
	rows = tableRows(out)
	if len(rows) != 5 || strings.Join(rows[0], " ") != "IMAGE IMAGE ID KIND SIZE ON DISK CREATED USED BY" {
		t.Fatalf("macvz image ls:\n%s", out)
	}
	byName := map[string][]string{}
	for _, r := range rows[1:] {
		byName[r[0]] = r
	}
	for _, ref := range []string{v.plain, v.httpd} {
		r := byName[ref]
		// name, id, kind, size, on disk, "<age>", "ago", used by
		if len(r) != 8 || r[2] != "linux" || !humanSizeRE.MatchString(r[3]) || !humanSizeRE.MatchString(r[4]) || r[6] != "ago" {
			t.Errorf("macvz image ls row for %s: %q", ref, r)
		}
	}
	for _, r := range rows[1:] {
		if tag := byName[v.plain]; strings.Contains(r[0], "@sha256:") && len(tag) == 8 && r[1] == tag[1] && strings.Join(r[1:], " ") != strings.Join(tag[1:], " ") {
			t.Errorf("macvz image ls: the plain guest's digest row %q differs from its tag row %q", r, tag)
		}
	}
	if r := byName[v.plain]; len(r) == 8 && r[7] != pod[:13] {
		t.Errorf("macvz image ls: %s used by %q, want the pod %s", v.plain, r[7], pod[:13])
	}
	if r := byName[v.httpd]; len(r) == 8 && r[7] != "-" {
		t.Errorf("macvz image ls: %s used by %q, want nobody", v.httpd, r[7])
	}

	var img struct {
		ID        string   `json:"id"`
		Names     []string `json:"names"`
		Kind      string   `json:"kind"`
		SizeBytes int64    `json:"sizeBytes"`
		DiskBytes int64    `json:"diskBytes"`
		UsedBy    []string `json:"usedBy"`
		Info      struct {
			Kind     string `json:"kind"`
			Bootable bool   `json:"bootable"`
		} `json:"info"`
	}
	if err := json.Unmarshal([]byte(mustAdminCLI(t, d, "image", "inspect", v.plain)), &img); err != nil {
		t.Fatal(err)
	}
	if len(img.Names) == 0 || img.Names[0] != v.plain || img.Kind != "linux" || img.SizeBytes <= 0 || img.DiskBytes <= 0 ||
		len(img.UsedBy) != 1 || img.UsedBy[0] != pod || img.Info.Kind != "linux" || !img.Info.Bootable {
		t.Errorf("macvz image inspect: %+v", img)
	}

	// image rm of the used image: refused, nothing removed.
	if out, stderr, err := adminCLI(t, d, "image", "rm", v.plain); err == nil || out != "" ||
		stderr != "macvz: image "+v.plain+" is used by sandbox "+pod[:13]+"; remove the pod first: failed precondition\n" {
		t.Errorf("macvz image rm of a used image: %v, stdout %q, stderr %q", err, out, stderr)
	}
	if out := d.mustCrictl("images", "-q"); !strings.Contains(out, img.ID) {
		t.Errorf("the refused removal removed the image: crictl images -q:\n%s", out)
	}
	// Unknown names.
	if _, stderr, err := adminCLI(t, d, "image", "rm", "example.com/nosuch:1"); err == nil || !strings.Contains(stderr, `no image "example.com/nosuch:1" in the store`) {
		t.Errorf("macvz image rm of an unknown image: %v, %q", err, stderr)
	}
	if _, stderr, err := adminCLI(t, d, "vm", "inspect", "nosuch"); err == nil || !strings.Contains(stderr, `pod name "nosuch"`) {
		t.Errorf("macvz vm inspect of an unknown pod: %v, %q", err, stderr)
	}

	// The pod goes: the console follower ends with it.
	d.mustCrictl("stopp", pod)
	d.mustCrictl("rmp", pod)
	select {
	case err := <-followDone:
		if err != nil {
			t.Errorf("macvz vm console -f ended with %v:\n%.2000s", err, followOut.String())
		}
		if !strings.Contains(followOut.String(), "macvz-admin-console-marker") {
			t.Errorf("macvz vm console -f did not print the console:\n%.2000s", followOut.String())
		}
	case <-time.After(30 * time.Second):
		t.Error("macvz vm console -f still runs 30s after its pod was removed")
	}
	if out := mustAdminCLI(t, d, "vm", "ls"); len(tableRows(out)) != 1 {
		t.Errorf("macvz vm ls after the pod's removal:\n%s", out)
	}

	// image prune: both guest images go, the space is reported.
	out = mustAdminCLI(t, d, "image", "prune")
	t.Logf("macvz image prune:\n%s", out)
	lines := strings.Split(strings.TrimRight(out, "\n"), "\n")
	if len(lines) != 3 {
		t.Fatalf("macvz image prune:\n%s", out)
	}
	removed := map[string]bool{}
	lineRE := regexp.MustCompile(`^removed ([0-9a-f]{13}) \(linux, ([^ ]+) on disk\): (.+)$`)
	for _, l := range lines[:2] {
		m := lineRE.FindStringSubmatch(l)
		if m == nil || !humanSizeRE.MatchString(m[2]) {
			t.Errorf("macvz image prune line %q", l)
			continue
		}
		removed[strings.Split(m[3], ", ")[0]] = true
	}
	if !removed[v.plain] || !removed[v.httpd] {
		t.Errorf("macvz image prune removed %v, want %s and %s", removed, v.plain, v.httpd)
	}
	m := regexp.MustCompile(`^removed 2 images, freed ([^ ]+)$`).FindStringSubmatch(lines[2])
	if m == nil || !humanSizeRE.MatchString(m[1]) || m[1] == "0B" {
		t.Errorf("macvz image prune's summary %q, want the space freed", lines[2])
	}
	if out := mustAdminCLI(t, d, "image", "ls"); len(tableRows(out)) != 1 {
		t.Errorf("macvz image ls after prune:\n%s", out)
	}
	if out := strings.TrimSpace(d.mustCrictl("images", "-q")); out != "" {
		t.Errorf("crictl images after prune: %q", out)
	}
	if out := mustAdminCLI(t, d, "image", "prune"); out != "removed 0 images, freed 0B\n" {
		t.Errorf("macvz image prune with nothing to prune: %q", out)
	}

	// A daemon that is not running: its socket named.
	other := filepath.Join(d.dir, "other.toml")
	if err := os.WriteFile(other, []byte("root = \""+filepath.Join(d.dir, "nosuch-root")+"\"\nstate = \""+filepath.Join(d.dir, "nosuch-state")+"\"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(macvzBin, "vm", "ls", "--config", other)
	stderr, err := cmd.CombinedOutput()
	if want := "macvz: the macvz daemon is not running: no admin socket at " + filepath.Join(d.dir, "nosuch-state", "admin.sock"); err == nil || !strings.HasPrefix(string(stderr), want) {
		t.Errorf("macvz vm ls without a daemon: %v, %q; want %q", err, stderr, want)
	}
}

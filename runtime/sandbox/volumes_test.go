package sandbox

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/containerd/errdefs"

	"github.com/macvz/macvz/runtime/agentapi"
	"github.com/macvz/macvz/runtime/shim"
	"github.com/macvz/macvz/runtime/store"
	"github.com/macvz/macvz/runtime/vm"
)

// mkdirs makes directories below root.
func mkdirs(t *testing.T, root string, dirs ...string) {
	t.Helper()
	for _, d := range dirs {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
}

// symlink plants a symlink at root/at to target.
func symlink(t *testing.T, target, root, at string) {
	t.Helper()
	if err := os.Symlink(target, filepath.Join(root, at)); err != nil {
		t.Fatal(err)
	}
}

// kubeletPods lays out a kubelet pods directory: pod "u1" with volumes of
// several kinds and symlinks planted where directories belong, pod "u2"
// (another pod's secret), "u3" a symlink to u2's directory, "u4" with a
// symlink for its containers directory, "u5" without a volumes
// directory (not kubelet's pod).
func kubeletPods(t *testing.T) string {
	root := t.TempDir()
	mkdirs(t, root,
		"u1/volumes/kubernetes.io~secret/s1",
		"u1/volumes/kubernetes.io~empty-dir/scratch",
		"u1/volumes/kubernetes.io~projected/kube-api-access-x",
		"u1/volumes/kubernetes.io~configmap",
		"u1/volumes/kubernetes.io~downward-api/podinfo",
		"u1/volumes/kubernetes.io~csi/pv1/mount",
		"u2/volumes/kubernetes.io~secret/other",
		"u2/containers",
		"u4/volumes/kubernetes.io~empty-dir/e",
		"u5",
	)
	symlink(t, "/etc", root, "u1/volumes/kubernetes.io~configmap/cm")
	symlink(t, filepath.Join(root, "u2/volumes/kubernetes.io~secret"), root, "u1/volumes/kubernetes.io~git-repo")
	if err := os.WriteFile(filepath.Join(root, "u1/volumes/kubernetes.io~empty-dir/file"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	symlink(t, filepath.Join(root, "u2"), root, "u3")
	symlink(t, filepath.Join(root, "u2/containers"), root, "u4/containers")
	return root
}

// TestPodVolumeDirs: a pod's own volume directories are found (read-only
// for kubelet's API-data kinds), never its containers directory (nor is
// one made); symlinks where directories belong, other pods and hostile
// UIDs give nothing.
func TestPodVolumeDirs(t *testing.T) {
	root := kubeletPods(t)
	log := slog.New(slog.DiscardHandler)
	got := podVolumeDirs(log, []string{root}, "u1")
	want := []volumeDir{
		{root + "/u1/volumes/kubernetes.io~csi/pv1", false},
		{root + "/u1/volumes/kubernetes.io~downward-api/podinfo", true},
		{root + "/u1/volumes/kubernetes.io~empty-dir/scratch", false},
		{root + "/u1/volumes/kubernetes.io~projected/kube-api-access-x", true},
		{root + "/u1/volumes/kubernetes.io~secret/s1", true},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("u1's volume directories:\n got %v\nwant %v", got, want)
	}
	if _, err := os.Lstat(filepath.Join(root, "u1/containers")); !os.IsNotExist(err) {
		t.Errorf("u1's containers directory was made: %v", err)
	}

	// u3 is a symlink to u2's directory: nothing of u2 is shared
	// through it.
	if got := podVolumeDirs(log, []string{root}, "u3"); len(got) != 0 {
		t.Errorf("through a symlinked pod directory: %v", got)
	}
	if got := podVolumeDirs(log, []string{root}, "u4"); !reflect.DeepEqual(got, []volumeDir{{root + "/u4/volumes/kubernetes.io~empty-dir/e", false}}) {
		t.Errorf("u4: %v", got)
	}
	// Not kubelet's pod: nothing, and nothing made.
	if got := podVolumeDirs(log, []string{root}, "u5"); len(got) != 0 {
		t.Errorf("u5: %v", got)
	}
	if _, err := os.Lstat(filepath.Join(root, "u5/containers")); !os.IsNotExist(err) {
		t.Errorf("u5's containers directory was made: %v", err)
	}
	if got := podVolumeDirs(log, []string{root}, "nope"); len(got) != 0 {
		t.Errorf("a pod without a directory: %v", got)
	}

	for _, uid := range []string{"", ".", "..", "../" + filepath.Base(root), "u1/../u2", "u2/volumes", "/" + root + "/u2", "u2\x00", `u2\..`} {
		if got := podVolumeDirs(log, []string{root, filepath.Join(root, "u2")}, uid); len(got) != 0 {
			t.Errorf("UID %q: %v", uid, got)
		}
		if podUIDElem(uid) {
			t.Errorf("UID %q accepted", uid)
		}
	}
	for _, uid := range []string{"u1", "6f1c1e4b-0c5e-4a3e-9a53-3a3b3c3d3e3f", "..u1", "a.b"} {
		if !podUIDElem(uid) {
			t.Errorf("UID %q refused", uid)
		}
	}

	// Two roots: each gives the pod's directories.
	other := t.TempDir()
	mkdirs(t, other, "u1/volumes/kubernetes.io~empty-dir/more")
	if got := podVolumeDirs(log, []string{root, other}, "u1"); len(got) != len(want)+1 || got[len(got)-1].path != other+"/u1/volumes/kubernetes.io~empty-dir/more" {
		t.Errorf("two roots: %v", got)
	}
}

// TestCheckVolumeDir: the annotation's directories must be absolute,
// clean, existing and not symlinks.
func TestCheckVolumeDir(t *testing.T) {
	root := kubeletPods(t)
	if err := CheckVolumeDir(root + "/u2/containers"); err != nil {
		t.Error(err)
	}
	for _, p := range []string{"", "rel/dir", root + "/u2/../u2", root + "/u2/", root + "/u3", root + "/missing", root + "/u1/volumes/kubernetes.io~empty-dir/file"} {
		if err := CheckVolumeDir(p); !errdefs.IsInvalidArgument(err) {
			t.Errorf("%q: %v", p, err)
		}
	}
	log := slog.New(slog.DiscardHandler)
	if got := extraVolumeDirs(log, []string{root + "/u2/containers", root + "/u3", "/nonexistent"}); !reflect.DeepEqual(got, []volumeDir{{root + "/u2/containers", false}}) {
		t.Errorf("extra dirs: %v", got)
	}
}

// TestVolumeShareDirs: entries are named by position, a directory
// listed twice is one entry, and the image-volume directory is always
// the last entry, read-only.
func TestVolumeShareDirs(t *testing.T) {
	img := vm.ShareDir{Name: "images", HostPath: "/sb/image-volumes", ReadOnly: true}
	got := volumeShareDirs([]volumeDir{{"/p/a", true}, {"/p/b", false}, {"/p/a", false}, {"/x", false}}, "/sb/image-volumes")
	want := []vm.ShareDir{{Name: "0", HostPath: "/p/a", ReadOnly: true}, {Name: "1", HostPath: "/p/b"}, {Name: "2", HostPath: "/x"}, img}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("got %v, want %v", got, want)
	}
	if got := volumeShareDirs(nil, "/sb/image-volumes"); !reflect.DeepEqual(got, []vm.ShareDir{img}) {
		t.Errorf("no directories: %v", got)
	}
}

// TestResolveVolume: a host path is found in the deepest entry that
// holds it, by path elements; an unclean or relative path is in none.
func TestResolveVolume(t *testing.T) {
	dirs := []vm.ShareDir{
		{Name: "0", HostPath: "/pods/u1/volumes/kubernetes.io~secret/s"},
		{Name: "1", HostPath: "/pods/u1/containers"},
		{Name: "2", HostPath: "/data"},
		{Name: "3", HostPath: "/data/inner"},
	}
	type res struct {
		entry, rel string
		ok         bool
	}
	for in, want := range map[string]res{
		"/pods/u1/volumes/kubernetes.io~secret/s":       {"0", ".", true},
		"/pods/u1/volumes/kubernetes.io~secret/s/token": {"0", "token", true},
		"/pods/u1/containers/app/0123abcd":              {"1", "app/0123abcd", true},
		"/data/x/y":                                     {"2", "x/y", true},
		"/data/inner":                                   {"3", ".", true},
		"/data/inner/z":                                 {"3", "z", true},
		"/data/innerz":                                  {"2", "innerz", true},
		"/datax":                                        {},
		"/pods/u1/volumes/kubernetes.io~secret/s2":      {},
		"/pods/u1/volumes/kubernetes.io~secret":         {},
		"/pods/u1/etc-hosts":                            {},
		"/pods/u1/containers/../etc-hosts":              {},
		"/data/../pods/u2":                              {},
		"/data/./x":                                     {},
		"/data/":                                        {},
		"data/x":                                        {},
		"":                                              {},
		"/":                                             {},
	} {
		e, r, ok := resolveVolume(dirs, in)
		if (res{e, r, ok}) != want {
			t.Errorf("%q: got %q %q %v, want %+v", in, e, r, ok, want)
		}
	}
}

// TestVolumeRuleFor: kubelet's files at macOS system paths are skipped
// or tried; a Linux guest on vz keeps its /etc/hosts when kubelet's is
// not shared; anything else is required.
func TestVolumeRuleFor(t *testing.T) {
	for _, tc := range []struct {
		os, target string
		resolved   bool
		want       volumeRule
	}{
		{"darwin", "/dev/termination-log", true, volumeBestEffort},
		{"darwin", "/dev/termination-log", false, volumeSkipped},
		{"darwin", "/dev/custom-log", true, volumeBestEffort},
		{"darwin", "/etc/hosts", true, volumeSkipped},
		{"darwin", "/etc/hosts", false, volumeSkipped},
		{"darwin", "/private/etc/hosts", false, volumeSkipped},
		{"darwin", "/etc//hosts", false, volumeSkipped},
		{"darwin", "/var/run/secrets/kubernetes.io/serviceaccount", true, volumeRequired},
		{"darwin", "/var/run/secrets/kubernetes.io/serviceaccount", false, volumeRequired},
		{"darwin", "/devices", false, volumeRequired},
		{"linux", "/etc/hosts", false, volumeSkipped},
		{"linux", "/etc/hosts", true, volumeRequired},
		{"linux", "/dev/termination-log", true, volumeRequired},
		{"linux", "/dev/termination-log", false, volumeRequired},
	} {
		got, why := volumeRuleFor(tc.os, tc.target, tc.resolved, false)
		if got != tc.want || (got == volumeRequired) != (why == "") {
			t.Errorf("%s %s resolved=%v: %v %q, want %v", tc.os, tc.target, tc.resolved, got, why, tc.want)
		}
	}
	// kubelet's termination-log files are never linked, whatever the
	// guest and the path the container asked for.
	for _, os := range []string{"darwin", "linux"} {
		for _, target := range []string{"/dev/termination-log", "/tmp/my-termination"} {
			if got, why := volumeRuleFor(os, target, true, true); got != volumeSkipped || !strings.Contains(why, "symlink") {
				t.Errorf("termination log %s in a %s guest: %v %q", target, os, got, why)
			}
		}
	}
	roots := []string{"/var/lib/kubelet/pods"}
	for hp, want := range map[string]bool{
		"/var/lib/kubelet/pods/u1/containers/app/0123abcd":              true,
		"/var/lib/kubelet/pods/u1/containers":                           true,
		"/var/lib/kubelet/pods/u1/volumes/kubernetes.io~empty-dir/x":    false,
		"/var/lib/kubelet/pods/u2/containers/app/1":                     false, // another pod's: below no entry anyway
		"/var/lib/kubelet/pods/u1/../u1/containers/a/b":                 true,
		"/var/lib/kubelet/pods/u1/volumes/kubernetes.io~csi/containers": false,
		"/elsewhere/containers/app/1":                                   false,
	} {
		if got := terminationLog(roots, "u1", hp); got != want {
			t.Errorf("terminationLog(%s) = %v, want %v", hp, got, want)
		}
	}
	if terminationLog(roots, "..", "/var/lib/kubelet/containers/a") {
		t.Error("terminationLog with a hostile UID")
	}
}

// mountAgent records MountShare calls; a target in fail fails.
type mountAgent struct {
	agentapi.AgentClient
	mu    sync.Mutex
	calls []*agentapi.MountShareRequest
	fail  map[string]bool
}

func (a *mountAgent) MountShare(ctx context.Context, r *agentapi.MountShareRequest) (*agentapi.MountShareResponse, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.fail[r.Target] {
		return nil, errors.New("refused")
	}
	a.calls = append(a.calls, r)
	return &agentapi.MountShareResponse{}, nil
}

// TestVolumeShareBoot: on a host without bind mounts a vz sandbox's VM
// boots with the volume share of its pod's directories and annotation
// directories, mounted by the agent at boot; the node VM and a host
// with bind mounts get none.
func TestVolumeShareBoot(t *testing.T) {
	c := newTestController(t)
	if c.volumeShareOn() {
		t.Fatal("the volume share is on for qemu")
	}
	c.cfg.Backend = "vz"
	if c.volumeShareOn() != !hostBindMounts {
		t.Fatalf("volume share on vz: %v with host bind mounts %v", c.volumeShareOn(), hostBindMounts)
	}
	c.hostBinds = false
	root := kubeletPods(t)
	extra := t.TempDir()
	c.cfg.VolumeRoots = []string{root}
	spec := store.SandboxSpec{UID: "u1", VolumeDirs: []string{extra}}
	if !c.hasVolumeShare(spec) || c.hasVolumeShare(store.SandboxSpec{NodeShares: []string{root}}) {
		t.Error("hasVolumeShare: the pod's VM gets it, the node VM not")
	}
	sbDir := t.TempDir()
	sh, err := c.volumeShare("sb", sbDir, &spec)
	if err != nil {
		t.Fatal(err)
	}
	if sh.Tag != volumeTag || sh.HostPath != "" || len(sh.Dirs) != 7 || sh.Dirs[5] != (vm.ShareDir{Name: "5", HostPath: extra}) || !sh.Dirs[4].ReadOnly ||
		sh.Dirs[6] != (vm.ShareDir{Name: "images", HostPath: filepath.Join(sbDir, imageVolumeDir), ReadOnly: true}) {
		t.Errorf("volume share %+v", sh)
	}
	shape, _ := c.volumeShare("sb", sbDir, nil)
	if shape.Tag != volumeTag || len(shape.Dirs) != 1 || !realDir(filepath.Join(sbDir, imageVolumeDir)) {
		t.Errorf("shape %+v", shape)
	}
	if got := c.moreShareMounts(spec, "darwin"); !reflect.DeepEqual(got, []shareMount{{volumeTag, "/var/run/macvz/shared-vol", false}}) {
		t.Errorf("guest mounts of a macOS guest: %v", got)
	}
	node := store.SandboxSpec{NodeShares: []string{"/var/lib/kubelet/pods"}}
	if got := c.moreShareMounts(node, "linux"); !reflect.DeepEqual(got, nodeShareMounts(node, "linux")) {
		t.Errorf("guest mounts of the node VM: %v", got)
	}
	c.hostBinds = true
	if c.hasVolumeShare(spec) || len(c.moreShareMounts(spec, "linux")) != 0 {
		t.Error("a host with bind mounts gets the volume share")
	}
}

// TestBindVolumesFromShare: on a host without bind mounts, each volume
// is a subpath of the volume share the VM booted with; kubelet's files
// at macOS system paths are skipped (or tried), and a volume below no
// entry fails with FailedPrecondition naming the annotation.
func TestBindVolumesFromShare(t *testing.T) {
	c := newTestController(t)
	c.cfg.Backend, c.hostBinds = "vz", false
	root := kubeletPods(t)
	c.cfg.VolumeRoots = []string{root}
	dirs := []vm.ShareDir{
		{Name: "0", HostPath: root + "/u1/volumes/kubernetes.io~projected/kube-api-access-x", ReadOnly: true},
		// Never an entry since termination logs are not shared (a VM
		// booted by an older daemon could have it): still skipped.
		{Name: "1", HostPath: root + "/u1/containers"},
		{Name: "2", HostPath: root + "/u1/volumes/kubernetes.io~empty-dir/scratch"},
	}
	sb := store.Sandbox{ID: "sb1", Dir: t.TempDir(), VMOS: "darwin", Spec: &store.SandboxSpec{UID: "u1"}}
	spec := vm.Spec{ID: sb.ID, Shares: []vm.Share{{Tag: sharedTag, HostPath: sb.Dir + "/shared"}, {Tag: volumeTag, Dirs: dirs}}}
	b, _ := json.Marshal(spec)
	if err := os.WriteFile(filepath.Join(sb.Dir, shim.SpecFile), b, 0o600); err != nil {
		t.Fatal(err)
	}
	a := &mountAgent{fail: map[string]bool{"/dev/termination-log": true}}
	vols := []Volume{
		{HostPath: dirs[0].HostPath, GuestPath: "/var/run/secrets/kubernetes.io/serviceaccount", ReadOnly: true},
		{HostPath: root + "/u1/containers/app/c1", GuestPath: "/dev/termination-log"},
		{HostPath: root + "/u1/etc-hosts", GuestPath: "/etc/hosts"},
	}
	if err := c.BindVolumes(context.Background(), sb, a, "c1", vols); err != nil {
		t.Fatal(err)
	}
	want := []*agentapi.MountShareRequest{
		{Tag: volumeTag, Subpath: "0", Target: "/var/run/secrets/kubernetes.io/serviceaccount", ReadOnly: true, CreateTarget: true},
	}
	if !reflect.DeepEqual(a.calls, want) {
		t.Errorf("mounts %v", a.calls)
	}

	// Even a guest that would take it never gets the termination log
	// (kubelet reads it back on the host), at whatever path; an emptyDir
	// at a /dev path is tried.
	a = &mountAgent{}
	custom := []Volume{vols[1], {HostPath: root + "/u1/containers/app/c1", GuestPath: "/tmp/term"}, {HostPath: dirs[2].HostPath, GuestPath: "/dev/scratch"}}
	if err := c.BindVolumes(context.Background(), sb, a, "c1", custom); err != nil {
		t.Fatal(err)
	}
	if len(a.calls) != 1 || a.calls[0].Subpath != "2" || a.calls[0].Target != "/dev/scratch" {
		t.Errorf("termination logs and a /dev emptyDir in a macOS guest: %v", a.calls)
	}

	// A Linux guest on vz: the same, and the hosts file skipped.
	sb.VMOS = "linux"
	a = &mountAgent{}
	if err := c.BindVolumes(context.Background(), sb, a, "c1", append(vols, custom...)); err != nil {
		t.Fatal(err)
	}
	if len(a.calls) != 2 || a.calls[0].Subpath != "0" || a.calls[1].Subpath != "2" {
		t.Errorf("Linux guest: %v", a.calls)
	}

	// Below no entry: another pod's secret, the pod directory itself.
	for _, hp := range []string{root + "/u2/volumes/kubernetes.io~secret/other", root + "/u1", root + "/u1/volumes/kubernetes.io~projected/kube-api-access-x/../../kubernetes.io~secret/s1"} {
		err := c.BindVolumes(context.Background(), sb, &mountAgent{}, "c2", []Volume{{HostPath: hp, GuestPath: "/data"}})
		if !errdefs.IsFailedPrecondition(err) || !strings.Contains(err.Error(), "fixed when it boots") || !strings.Contains(err.Error(), AnnotationVolumeDirs) {
			t.Errorf("%s: %v", hp, err)
		}
	}
}

// TestImageVolumeFromShare: on a host without bind mounts an image
// volume (a directory of an image tree, or a file of it) is cloned into
// the sandbox's image-volume entry and linked from there, read-only;
// the tree's symlinks are cloned as links, never followed; a second
// start of the container uses its clone again.
func TestImageVolumeFromShare(t *testing.T) {
	c := newTestController(t)
	c.cfg.Backend, c.hostBinds = "vz", false
	sb := store.Sandbox{ID: "sb1", Dir: t.TempDir(), VMOS: "darwin", Spec: &store.SandboxSpec{UID: "u1"}}
	images := filepath.Join(sb.Dir, imageVolumeDir)
	if err := os.Mkdir(images, 0o700); err != nil {
		t.Fatal(err)
	}
	spec := vm.Spec{ID: sb.ID, Shares: []vm.Share{{Tag: volumeTag, Dirs: volumeShareDirs(nil, images)}}}
	b, _ := json.Marshal(spec)
	if err := os.WriteFile(filepath.Join(sb.Dir, shim.SpecFile), b, 0o600); err != nil {
		t.Fatal(err)
	}
	tree := t.TempDir()
	secret := filepath.Join(t.TempDir(), "secret")
	for _, f := range []struct{ name, data string }{{"bin/tool", "#!/bin/sh\n"}, {"data/a.txt", "a"}} {
		p := filepath.Join(tree, f.name)
		os.MkdirAll(filepath.Dir(p), 0o755)
		if err := os.WriteFile(p, []byte(f.data), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(secret, []byte("host secret"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(secret, filepath.Join(tree, "data/link")); err != nil {
		t.Fatal(err)
	}
	cid := strings.Repeat("c", 64)
	vols := []Volume{
		{HostPath: tree, GuestPath: "/tools", ReadOnly: true, Image: true},
		{HostPath: filepath.Join(tree, "data/a.txt"), GuestPath: "/a.txt", ReadOnly: true, Image: true},
	}
	for range 2 {
		a := &mountAgent{}
		if err := c.BindVolumes(context.Background(), sb, a, cid, vols); err != nil {
			t.Fatal(err)
		}
		want := []*agentapi.MountShareRequest{
			{Tag: volumeTag, Subpath: "images/" + cid + "-0", Target: "/tools", ReadOnly: true, CreateTarget: true},
			{Tag: volumeTag, Subpath: "images/" + cid + "-1", Target: "/a.txt", ReadOnly: true, CreateTarget: true},
		}
		if !reflect.DeepEqual(a.calls, want) {
			t.Errorf("mounts %v", a.calls)
		}
	}
	if b, err := os.ReadFile(filepath.Join(images, cid+"-0", "bin/tool")); err != nil || string(b) != "#!/bin/sh\n" {
		t.Errorf("the clone's tool: %q %v", b, err)
	}
	if l, err := os.Readlink(filepath.Join(images, cid+"-0", "data/link")); err != nil || l != secret {
		t.Errorf("the tree's symlink in the clone: %q %v; want it kept as a link", l, err)
	}
	if b, err := os.ReadFile(filepath.Join(images, cid+"-1")); err != nil || string(b) != "a" {
		t.Errorf("the cloned file: %q %v", b, err)
	}
	// A container ID that is not one cannot name a clone.
	err := c.BindVolumes(context.Background(), sb, &mountAgent{}, "../x", vols[:1])
	if !errdefs.IsInvalidArgument(err) {
		t.Errorf("a hostile container id: %v", err)
	}
}

// TestMountAllSharesLazy: a pod's boot gives the guest every share lazily
// (mounted on a container's first bind of it), a pooled VM mounts them
// at once; each with the backend's file system, at its guest path.
func TestMountAllSharesLazy(t *testing.T) {
	c := newTestController(t)
	node := store.SandboxSpec{NodeShares: []string{"/var/lib/kubelet/pods"}}
	for _, lazy := range []bool{true, false} {
		a := &mountAgent{}
		if err := c.mountAllShares(context.Background(), a, node, "linux", lazy); err != nil {
			t.Fatal(err)
		}
		want := c.shareMounts(node, "linux")
		if len(a.calls) != len(want) || len(want) < 3 {
			t.Fatalf("lazy %v: %d calls for %d shares: %v", lazy, len(a.calls), len(want), a.calls)
		}
		for _, sh := range want {
			i := slices.IndexFunc(a.calls, func(r *agentapi.MountShareRequest) bool { return r.Tag == sh.tag })
			if i < 0 {
				t.Errorf("lazy %v: share %s not given", lazy, sh.tag)
				continue
			}
			r := a.calls[i]
			if r.Lazy != lazy || r.Fstype != "9p" || r.Target != sh.target || r.ReadOnly != sh.ro || r.Subpath != "" {
				t.Errorf("lazy %v: share %s given as %v", lazy, sh.tag, r)
			}
		}
	}
}

package cri

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/macvz/macvz/cri/config"
	"github.com/macvz/macvz/runtime/adminapi"
	"github.com/macvz/macvz/runtime/sandbox"
	"github.com/macvz/macvz/runtime/shim"
)

// adminClient serves f's admin API on its socket and connects to it.
func adminClient(t *testing.T, f *fake) adminapi.AdminClient {
	t.Helper()
	stop, err := serveAdmin(f.Service)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(stop)
	cc, err := grpc.NewClient("unix://"+AdminSocket(f.cfg), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return adminapi.NewAdminClient(cc)
}

// TestAdminSocket: the admin socket is root's alone (0600, made with that
// mode), answers the node calls of a daemon without a node VM with
// FailedPrecondition saying so, and is gone when the server stops.
func TestAdminSocket(t *testing.T) {
	f := newFake(t)
	stop, err := serveAdmin(f.Service)
	if err != nil {
		t.Fatal(err)
	}
	path := AdminSocket(f.cfg)
	fi, err := os.Lstat(path)
	if err != nil {
		t.Fatal(err)
	}
	st := fi.Sys().(*syscall.Stat_t)
	if fi.Mode()&os.ModeSocket == 0 || fi.Mode().Perm() != 0o600 || st.Uid != 0 {
		t.Errorf("admin socket: mode %v, owner %d; want a socket, 0600, root's", fi.Mode(), st.Uid)
	}
	cc, err := grpc.NewClient("unix://"+path, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	c := adminapi.NewAdminClient(cc)
	ctx := context.Background()
	for name, call := range map[string]func() error{
		"NodeStatus":  func() error { _, err := c.NodeStatus(ctx, &adminapi.NodeStatusRequest{}); return err },
		"NodeRestart": func() error { _, err := c.NodeRestart(ctx, &adminapi.NodeRestartRequest{}); return err },
		"NodeStop":    func() error { _, err := c.NodeStop(ctx, &adminapi.NodeStopRequest{}); return err },
	} {
		err := call()
		if status.Code(err) != codes.FailedPrecondition || !strings.Contains(status.Convert(err).Message(), "[node] enabled is false") {
			t.Errorf("%s without a node VM: %v, want FailedPrecondition naming [node] enabled", name, err)
		}
	}
	stop()
	if _, err := os.Lstat(path); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("admin socket after stop: %v", err)
	}
}

// TestAdminVMs: ListVMs shows a running pod's VM (the size it booted
// with, its cold boot, its slot, its image by name) and a created pod
// whose VM has not booted; InspectVM finds a VM by ID, ID prefix, name
// and namespace/name and shows its spec, shim pid and sockets; bad names
// are NotFound or InvalidArgument (an ambiguous name lists the
// candidates).
func TestAdminVMs(t *testing.T) {
	f := newFake(t)
	c := adminClient(t, f)
	ctx := context.Background()
	sbID, _ := f.startedCtr(t, "web")
	idle := f.runPod(t, hostPod(t, "idle"), "")
	other := hostPod(t, "web")
	other.Metadata.Namespace = "other"
	other.Metadata.Uid = "uid-web-other"
	otherID := f.runPod(t, other, "")

	l, err := c.ListVMs(ctx, &adminapi.ListVMsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if len(l.GetVms()) != 3 {
		t.Fatalf("ListVMs: %d VMs, want 3: %v", len(l.GetVms()), l.GetVms())
	}
	byID := map[string]*adminapi.VM{}
	for _, v := range l.GetVms() {
		byID[v.GetSandboxId()] = v
	}
	web := byID[sbID]
	if web.GetState() != "running" || web.GetPodName() != "web" || web.GetPodNamespace() != "ns" || web.GetBackend() != f.cfg.Backend ||
		web.GetImage() != guestRef || web.GetCpus() < 1 || web.GetMemoryBytes() != 320<<20 || web.GetBoot() != sandbox.BootCold ||
		web.GetSlot() != 1 || web.GetOs() != "linux" || web.GetBootedUnixNano() == 0 {
		t.Errorf("the running pod's VM: %v", web)
	}
	if v := byID[idle]; v.GetState() != "created" || v.GetCpus() != 0 || v.GetBoot() != "" || v.GetSlot() != 0 {
		t.Errorf("the pod whose VM has not booted: %v", v)
	}

	// What the shim's files would be: the fake shim writes none.
	dir := f.ctl.Dir(sbID)
	if err := os.WriteFile(filepath.Join(dir, shim.SpecFile), []byte(`{"id":"`+sbID+`","cpus":2}`), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, shim.PIDFile), []byte(strconv.Itoa(os.Getpid())+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Chdir(dir) // the socket's whole path is too long for bind(2)
	ln, err := net.Listen("unix", shim.SocketFile)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	for _, pod := range []string{sbID, sbID[:8], "ns/web"} {
		r, err := c.InspectVM(ctx, &adminapi.InspectVMRequest{Pod: pod})
		if err != nil {
			t.Errorf("InspectVM(%s): %v", pod, err)
			continue
		}
		if r.GetVm().GetSandboxId() != sbID || !bytes.Contains(r.GetSpec(), []byte(`"cpus":2`)) || r.GetShimPid() != int64(os.Getpid()) ||
			!slices.Equal(r.GetSockets(), []string{filepath.Join(dir, shim.SocketFile)}) || r.GetConsoleLog() != filepath.Join(dir, sandbox.ConsoleLogFile) {
			t.Errorf("InspectVM(%s): %v", pod, r)
		}
	}
	if r, err := c.InspectVM(ctx, &adminapi.InspectVMRequest{Pod: "other/web"}); err != nil || r.GetVm().GetSandboxId() != otherID || len(r.GetSpec()) != 0 || r.GetShimPid() != 0 {
		t.Errorf("InspectVM(other/web) of a VM not booted: %v, %v", r, err)
	}
	for _, tc := range []struct {
		pod     string
		code    codes.Code
		mention string
	}{
		{"", codes.InvalidArgument, "no pod given"},
		{"nosuch", codes.NotFound, "nosuch"},
		{"ns/idle2", codes.NotFound, "ns/idle2"},
		// Both web pods are ready: the name alone is ambiguous.
		{"web", codes.InvalidArgument, sbID[:13]},
	} {
		_, err := c.InspectVM(ctx, &adminapi.InspectVMRequest{Pod: tc.pod})
		if status.Code(err) != tc.code || !strings.Contains(status.Convert(err).Message(), tc.mention) {
			t.Errorf("InspectVM(%q): %v, want %s mentioning %q", tc.pod, err, tc.code, tc.mention)
		}
	}
}

// TestAdminConsole: Console sends the rotated part and then the log;
// a VM that never booted has none (NotFound); a symlink planted as the
// log is refused.
func TestAdminConsole(t *testing.T) {
	f := newFake(t)
	c := adminClient(t, f)
	ctx := context.Background()
	sbID, _ := f.startedCtr(t, "web")
	log := filepath.Join(f.ctl.Dir(sbID), sandbox.ConsoleLogFile)
	if err := os.WriteFile(log+".1", []byte("old boot\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(log, []byte("login: \x1b]0;title\x07\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	read := func(pod string) (string, error) {
		s, err := c.Console(ctx, &adminapi.ConsoleRequest{Pod: pod})
		if err != nil {
			return "", err
		}
		var out []byte
		for {
			ch, err := s.Recv()
			if err == io.EOF {
				return string(out), nil
			}
			if err != nil {
				return string(out), err
			}
			out = append(out, ch.GetData()...)
		}
	}
	if out, err := read("ns/web"); err != nil || out != "old boot\nlogin: \x1b]0;title\x07\n" {
		t.Errorf("Console: %q, %v", out, err)
	}
	idle := f.runPod(t, hostPod(t, "idle"), "")
	if _, err := read(idle); status.Code(err) != codes.NotFound || !strings.Contains(status.Convert(err).Message(), "has not booted") {
		t.Errorf("Console of a VM that never booted: %v", err)
	}
	os.Remove(log)
	os.Remove(log + ".1")
	if err := os.Symlink("/etc/shadow", log); err != nil {
		t.Fatal(err)
	}
	if out, err := read(sbID); status.Code(err) != codes.FailedPrecondition || strings.Contains(out, "root:") {
		t.Errorf("Console through a symlink: %q, %v", out, err)
	}
}

// TestFollowConsole: a followed log is sent as it grows and across a
// rotation (the rest of the old file, then the new one), and the follow
// ends when the sandbox is gone.
func TestFollowConsole(t *testing.T) {
	path := filepath.Join(t.TempDir(), "console.log")
	if err := os.WriteFile(path, []byte("one\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var got bytes.Buffer
	var gone bool
	sent := func(want string) bool {
		mu.Lock()
		defer mu.Unlock()
		return got.String() == want
	}
	done := make(chan error, 1)
	go func() {
		done <- followConsole(context.Background(), path, true, 5*time.Millisecond, func(b []byte) error {
			mu.Lock()
			defer mu.Unlock()
			got.Write(b)
			return nil
		}, func() bool { mu.Lock(); defer mu.Unlock(); return gone })
	}()
	wait := func(want string) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for !sent(want) {
			if time.Now().After(deadline) {
				mu.Lock()
				t.Fatalf("sent %q, want %q", got.String(), want)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	wait("one\n")
	appendTo := func(p, s string) {
		fh, err := os.OpenFile(p, os.O_WRONLY|os.O_APPEND, 0)
		if err != nil {
			t.Fatal(err)
		}
		fh.WriteString(s)
		fh.Close()
	}
	appendTo(path, "two\n")
	wait("one\ntwo\n")
	// A rotation as boundedlog does it, with a last write to the old
	// file racing the follower's check.
	if err := os.Rename(path, path+".1"); err != nil {
		t.Fatal(err)
	}
	appendTo(path+".1", "three\n")
	if err := os.WriteFile(path, []byte("four\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	wait("one\ntwo\nthree\nfour\n")
	mu.Lock()
	gone = true
	mu.Unlock()
	os.Remove(path)
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("follow ended with %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the follow did not end with the sandbox")
	}
}

// TestAdminImages: ListImages shows the image with its sizes, users and
// pin; RemoveImage of a used image is FailedPrecondition naming the
// sandbox and removes nothing; PruneImages keeps used and pinned images
// and removes the rest; an unknown image is NotFound.
func TestAdminImages(t *testing.T) {
	f := newFake(t, func(c *config.Config) {
		// "guest" pins guestRef; "other" is nobody's.
		c.RuntimeHandlers = map[string]config.RuntimeHandler{"guest": {VMImage: guestRef}}
	})
	c := adminClient(t, f)
	ctx := context.Background()
	f.images.addOther("example.com/other:1", guestProcess)
	f.images.addOther("example.com/unused:1", guestProcess)
	pod := hostPod(t, "web")
	sbID := f.runPod(t, pod, "")
	ctrID := f.createCtr(t, sbID, pod, &runtimeapi.ContainerConfig{Metadata: &runtimeapi.ContainerMetadata{Name: "app"},
		Image: &runtimeapi.ImageSpec{Image: "example.com/other:1"}, LogPath: "app.log"})
	if _, err := f.StartContainer(ctx, &runtimeapi.StartContainerRequest{ContainerId: ctrID}); err != nil {
		t.Fatal(err)
	}

	l, err := c.ListImages(ctx, &adminapi.ListImagesRequest{})
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]*adminapi.Image{}
	for _, img := range l.GetImages() {
		got[img.GetNames()[0]] = img
	}
	if len(got) != 3 {
		t.Fatalf("ListImages: %v", l.GetImages())
	}
	if img := got[guestRef]; !img.GetPinned() || len(img.GetUsedBy()) != 0 || img.GetKind() != "linux" || img.GetSizeBytes() != 1<<20 || img.GetDiskBytes() != 512<<10 {
		t.Errorf("the pinned image: %v", img)
	}
	if img := got["example.com/other:1"]; img.GetPinned() || !slices.Equal(img.GetUsedBy(), []string{sbID}) {
		t.Errorf("the used image: %v", img)
	}

	r, err := c.InspectImage(ctx, &adminapi.InspectImageRequest{Ref: "example.com/other:1"})
	if err != nil || r.GetImage().GetId() != got["example.com/other:1"].GetId() || !strings.Contains(r.GetInfo(), `"kind":"linux"`) {
		t.Errorf("InspectImage: %v, %v", r, err)
	}
	if _, err := c.InspectImage(ctx, &adminapi.InspectImageRequest{Ref: "example.com/nosuch:1"}); status.Code(err) != codes.NotFound || !strings.Contains(status.Convert(err).Message(), "example.com/nosuch:1") {
		t.Errorf("InspectImage of an unknown image: %v", err)
	}
	_, err = c.RemoveImage(ctx, &adminapi.RemoveImageRequest{Ref: "example.com/other:1"})
	if status.Code(err) != codes.FailedPrecondition || !strings.Contains(status.Convert(err).Message(), sbID[:13]) {
		t.Errorf("RemoveImage of a used image: %v, want FailedPrecondition naming the sandbox", err)
	}
	if _, err := c.RemoveImage(ctx, &adminapi.RemoveImageRequest{Ref: "example.com/nosuch:1"}); status.Code(err) != codes.NotFound {
		t.Errorf("RemoveImage of an unknown image: %v", err)
	}

	p, err := c.PruneImages(ctx, &adminapi.PruneImagesRequest{})
	if err != nil || len(p.GetRemoved()) != 1 || p.GetRemoved()[0].GetNames()[0] != "example.com/unused:1" {
		t.Errorf("PruneImages with a pod running: %v, %v", p, err)
	}
	if _, err := f.RemovePodSandbox(ctx, &runtimeapi.RemovePodSandboxRequest{PodSandboxId: sbID}); err != nil {
		t.Fatal(err)
	}
	p, err = c.PruneImages(ctx, &adminapi.PruneImagesRequest{})
	if err != nil || len(p.GetRemoved()) != 1 || p.GetRemoved()[0].GetNames()[0] != "example.com/other:1" {
		t.Errorf("PruneImages after the pod: %v, %v", p, err)
	}
	if _, ok := f.images.lookup(guestRef); !ok {
		t.Error("prune removed the pinned image")
	}
	rm, err := c.RemoveImage(ctx, &adminapi.RemoveImageRequest{Ref: guestRef})
	if err != nil || rm.GetRemoved().GetNames()[0] != guestRef {
		t.Errorf("RemoveImage of the pinned image (rm is explicit): %v, %v", rm, err)
	}
}

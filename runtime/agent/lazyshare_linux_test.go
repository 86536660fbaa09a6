package agent

import (
	"context"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"testing"

	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	api "github.com/macvz/macvz/runtime/agentapi"
)

// TestLazyShare: a lazy share is checked and recorded, not mounted; its
// first subpath mounts it, once however many binds ask at the same time;
// a failed mount leaves it lazy for the next bind; a path outside it
// mounts nothing; unmounting a share never mounted forgets it. (The
// binds themselves need root: as another user only the mounts counted
// are checked.)
func TestLazyShare(t *testing.T) {
	ctx := context.Background()
	var mu sync.Mutex
	var mounted []string
	failNext := true
	ta := startAgent(t, func(c *config) {
		c.system = true
		c.mountRoot = func(ctx context.Context, req *api.MountShareRequest) error {
			mu.Lock()
			defer mu.Unlock()
			mounted = append(mounted, req.Tag)
			if failNext {
				failNext = false
				return errf(codes.NotFound, "no such 9p device")
			}
			return nil
		}
	})
	mounts := func() int {
		mu.Lock()
		defer mu.Unlock()
		return len(mounted)
	}
	code := func(err error) codes.Code { return status.Code(err) }

	share := t.TempDir()
	for i := range 4 {
		if err := os.MkdirAll(filepath.Join(share, "c", strconv.Itoa(i)), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	targets := t.TempDir()
	t.Cleanup(func() {
		for i := range 4 {
			unix.Unmount(filepath.Join(targets, strconv.Itoa(i)), unix.MNT_DETACH)
		}
	})
	bind := func(tag, sub string, i int) error {
		_, err := ta.client.MountShare(ctx, &api.MountShareRequest{
			Tag: tag, Subpath: sub, Target: filepath.Join(targets, strconv.Itoa(i)), CreateTarget: true,
		})
		return err
	}

	if _, err := ta.client.MountShare(ctx, &api.MountShareRequest{Tag: "s", Fstype: "9p", Target: share, Lazy: true}); err != nil {
		t.Fatal(err)
	}
	if _, err := ta.client.MountShare(ctx, &api.MountShareRequest{Tag: "bad", Fstype: "ext4", Target: share, Lazy: true}); code(err) != codes.InvalidArgument {
		t.Errorf("a lazy ext4 share: %v, want InvalidArgument at once", err)
	}
	if n := mounts(); n != 0 {
		t.Fatalf("%d mounts before any bind, want none", n)
	}
	if err := bind("s", "../etc", 0); code(err) != codes.InvalidArgument {
		t.Errorf("a subpath outside the share: %v, want InvalidArgument", err)
	}
	if n := mounts(); n != 0 {
		t.Fatalf("a refused subpath mounted the share (%d mounts)", n)
	}
	if err := bind("s", "c/0", 0); code(err) != codes.NotFound {
		t.Errorf("a bind whose share fails to mount: %v, want the mount's NotFound", err)
	}
	var wg sync.WaitGroup
	errs := make([]error, 4)
	for i := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = bind("s", "c/"+strconv.Itoa(i), i)
		}()
	}
	wg.Wait()
	if n := mounts(); n != 2 {
		t.Errorf("%d mounts after a failed one and four binds at once, want 2", n)
	}
	if os.Geteuid() == 0 {
		for i, err := range errs {
			if err != nil {
				t.Errorf("bind %d: %v", i, err)
			}
		}
	}

	// A share never mounted is forgotten by its unmount; a bind after
	// that has no share.
	if _, err := ta.client.MountShare(ctx, &api.MountShareRequest{Tag: "u", Fstype: "9p", Target: share, Lazy: true}); err != nil {
		t.Fatal(err)
	}
	if _, err := ta.client.UnmountShare(ctx, &api.UnmountShareRequest{Tag: "u"}); err != nil {
		t.Fatalf("unmounting a lazy share: %v", err)
	}
	if err := bind("u", "c/0", 0); code(err) != codes.FailedPrecondition {
		t.Errorf("a bind of a forgotten share: %v, want FailedPrecondition", err)
	}
	if n := mounts(); n != 2 {
		t.Errorf("%d mounts, want still 2", n)
	}
}

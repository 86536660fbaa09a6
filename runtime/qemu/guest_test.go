package qemu

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/macvz/macvz/integration/guest"
)

// testGuestFiles is the test guest, built once per test process.
var testGuestFiles struct {
	once           sync.Once
	dir            string
	kernel, initrd string
	err            error
	out            []byte // go build's output on failure
}

func TestMain(m *testing.M) {
	code := m.Run()
	if d := testGuestFiles.dir; d != "" {
		os.RemoveAll(d)
	}
	os.Exit(code)
}

// Environment variables that hand a built guest to a helper process.
const (
	envKernel = "QEMU_TEST_KERNEL"
	envInitrd = "QEMU_TEST_INITRD"
)

// testGuest returns the Debian kernel (ELF vmlinux, PVH) and an initramfs
// whose /init is testdata/testinit, both made with integration/guest (the
// kernel comes from its package cache: guest.DefaultCacheDir).
func testGuest(t testing.TB) (kernel, initrd string) {
	t.Helper()
	g := &testGuestFiles
	g.once.Do(func() {
		if k, i := os.Getenv(envKernel), os.Getenv(envInitrd); k != "" && i != "" {
			g.kernel, g.initrd = k, i
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
		defer cancel()
		dir, err := os.MkdirTemp("", "qemu-test-guest-")
		if err != nil {
			g.err = err
			return
		}
		g.dir = dir
		init := filepath.Join(dir, "init")
		cmd := exec.CommandContext(ctx, "go", "build", "-o", init, "./testdata/testinit")
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH=amd64")
		if g.out, g.err = cmd.CombinedOutput(); g.err != nil {
			return
		}
		cache := &guest.Cache{Dir: guest.DefaultCacheDir()}
		k, err := cache.Kernel(ctx, "")
		if err != nil {
			g.err = err
			return
		}
		g.initrd = filepath.Join(dir, "initrd.img")
		f, err := os.Create(g.initrd)
		if err != nil {
			g.err = err
			return
		}
		// Uncompressed: it boots faster under TCG. Modules: the default
		// set, the same the real guest agent loads.
		if _, err := guest.WriteInitramfs(f, guest.InitramfsOptions{Init: init, Kernel: k}); err != nil {
			f.Close()
			g.err = err
			return
		}
		if g.err = f.Close(); g.err != nil {
			return
		}
		g.kernel = k.Vmlinux
	})
	if g.err != nil {
		t.Fatalf("building the test guest: %v\n%s", g.err, g.out)
	}
	return g.kernel, g.initrd
}

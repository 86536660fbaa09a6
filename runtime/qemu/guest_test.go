package qemu

import (
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
)

var testInit struct {
	once sync.Once
	dir  string
	path string
	err  error
	out  []byte
}

// buildTestInit builds testdata/testinit as a static linux/amd64 binary,
// once per test process.
func buildTestInit(t testing.TB) string {
	t.Helper()
	testInit.once.Do(func() {
		testInit.dir, testInit.err = os.MkdirTemp("", "qemu-testinit-")
		if testInit.err != nil {
			return
		}
		testInit.path = filepath.Join(testInit.dir, "init")
		cmd := exec.Command("go", "build", "-o", testInit.path, "./testdata/testinit")
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH=amd64")
		testInit.out, testInit.err = cmd.CombinedOutput()
	})
	if testInit.err != nil {
		t.Fatalf("building testinit: %v\n%s", testInit.err, testInit.out)
	}
	return testInit.path
}

// testGuest returns a kernel and an initramfs whose /init is testinit.
// TEMPORARY: from QEMU_TEST_KERNEL/QEMU_TEST_INITRD until integration/guest
// (the shared kernel fetcher and initramfs builder) lands.
func testGuest(t testing.TB) (kernel, initrd string) {
	t.Helper()
	k, i := os.Getenv("QEMU_TEST_KERNEL"), os.Getenv("QEMU_TEST_INITRD")
	if k == "" {
		t.Skip("no test guest yet: integration/guest has not landed (set QEMU_TEST_KERNEL and QEMU_TEST_INITRD)")
	}
	return k, i
}

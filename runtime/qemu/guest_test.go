package qemu

import (
	"os"
	"testing"
)

// testGuest returns a kernel and an initramfs whose /init is testinit.
// TEMPORARY: from env until integration/guest lands.
func testGuest(t testing.TB) (kernel, initrd string) {
	k, i := os.Getenv("QEMU_TEST_KERNEL"), os.Getenv("QEMU_TEST_INITRD")
	if k == "" {
		t.Skip("no guest")
	}
	return k, i
}

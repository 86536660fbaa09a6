package qemu

import (
	"bytes"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/macvz/macvz/integration/testutil"
)

// QEMU as root keeps only qemuCaps: checked on the real setpriv with a
// stand-in for QEMU that prints its own capability sets.
func TestCommandDropsCapabilities(t *testing.T) {
	testutil.RequireRoot(t)
	testutil.RequireTool(t, "setpriv", "util-linux")
	out, err := command("cat", []string{"/proc/self/status"}).Output()
	if err != nil {
		t.Fatal(err)
	}
	field := func(name string) uint64 {
		for _, l := range strings.Split(string(out), "\n") {
			if v, ok := strings.CutPrefix(l, name+":"); ok {
				n, err := strconv.ParseUint(strings.TrimSpace(v), 16, 64)
				if err != nil {
					t.Fatal(err)
				}
				return n
			}
		}
		t.Fatalf("no %s in\n%s", name, out)
		return 0
	}
	want := uint64(0)
	for _, c := range []int{unix.CAP_DAC_OVERRIDE, unix.CAP_DAC_READ_SEARCH, unix.CAP_FOWNER, unix.CAP_FSETID, unix.CAP_NET_ADMIN, unix.CAP_NET_BIND_SERVICE} {
		want |= 1 << c
	}
	if got := field("CapBnd"); got != want {
		t.Errorf("CapBnd %x, want %x", got, want)
	}
	if got := field("CapEff"); got&^want != 0 {
		t.Errorf("CapEff %x has more than %x", got, want)
	}
	if field("NoNewPrivs") != 1 {
		t.Error("no_new_privs not set")
	}
	if !bytes.Contains(out, []byte("Name:\tcat")) {
		t.Errorf("setpriv did not exec in place:\n%s", out)
	}
}

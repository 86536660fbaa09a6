package agent

import (
	"runtime"
	"strings"
	"testing"

	"github.com/containerd/containerd/v2/contrib/seccomp"
	"github.com/elastic/go-seccomp-bpf/arch"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	api "github.com/macvz/macvz/runtime/agentapi"
)

func TestHelperArgsCarryIsolation(t *testing.T) {
	c := compileJSON(t, blockChmod, arch.X86_64)
	args, err := helperArgs("/bin/sh", []string{"sh"}, helperSpec{NewMountNS: true, NewPidNS: true, MaskedPaths: []string{"/bin/ls"}, Seccomp: &c})
	if err != nil {
		t.Fatal(err)
	}
	joined := strings.Join(args, " ")
	for _, w := range []string{"mntns=new", "pidns=new", "maskpath=/bin/ls", "seccomp=", "seccompflags=0", "-- /bin/sh sh"} {
		if !strings.Contains(joined, w) {
			t.Errorf("helper args %q lack %q", joined, w)
		}
	}
	if _, err := helperArgs("/bin/sh", []string{"sh"}, helperSpec{NewMountNS: true, MaskedPaths: []string{"bin/ls"}}); err == nil {
		t.Error("a relative masked path was accepted")
	}
}

// TestSeccompRuntimeDefault: the agent's RuntimeDefault (Docker's profile,
// made in the guest) blocks what containerd's default profile blocks:
// every syscall containerd's refuses with zero arguments is refused, and
// the usual ones are allowed.
func TestSeccompRuntimeDefault(t *testing.T) {
	ai, err := arch.GetInfo(runtime.GOARCH)
	if err != nil {
		t.Skipf("no syscall table for %s", runtime.GOARCH)
	}
	caps := append([]string(nil), defaultCaps...)
	ours, err := seccompOf(&api.CreateProcessRequest{SeccompRuntimeDefault: true, RestrictCapabilities: true, Capabilities: caps})
	if err != nil || ours == nil {
		t.Fatalf("RuntimeDefault: %v", err)
	}
	if n := len(ours.Insns); n > bpfMaxInsns {
		t.Fatalf("%d instructions", n)
	}
	ctrd := seccomp.DefaultProfile(&specs.Spec{Process: &specs.Process{Capabilities: &specs.LinuxCapabilities{Bounding: caps}}})
	theirs, err := compileSeccomp(ctrd, ai)
	if err != nil {
		t.Fatalf("containerd's default profile: %v", err)
	}
	id := uint32(ai.ID)
	for name := range ai.SyscallNames {
		if runFilter(t, theirs, ai, id, name) != retAllow && runFilter(t, *ours, ai, id, name) == retAllow {
			t.Errorf("%s: containerd's default profile refuses it, ours allows it", name)
		}
	}
	for _, name := range []string{"read", "write", "execve", "exit_group", "clone"} {
		if got := runFilter(t, *ours, ai, id, name); got != retAllow {
			t.Errorf("%s: %#x, want allowed", name, got)
		}
	}
	for _, name := range []string{"mount", "kexec_load", "init_module", "bpf", "reboot", "unshare", "keyctl"} {
		if got := runFilter(t, *ours, ai, id, name); got == retAllow {
			t.Errorf("%s allowed by RuntimeDefault", name)
		}
	}
	// CAP_SYS_ADMIN opens what Docker's profile gates on it.
	admin, err := seccompOf(&api.CreateProcessRequest{SeccompRuntimeDefault: true, RestrictCapabilities: true, Capabilities: append(caps, "CAP_SYS_ADMIN")})
	if err != nil {
		t.Fatal(err)
	}
	if got := runFilter(t, *admin, ai, id, "mount"); got != retAllow {
		t.Errorf("mount with CAP_SYS_ADMIN: %#x, want allowed", got)
	}
	if _, err := seccompOf(&api.CreateProcessRequest{Seccomp: []byte("{")}); err == nil || !strings.Contains(err.Error(), "seccomp profile") {
		t.Errorf("a broken profile: %v", err)
	}
}

// defaultCaps is containerd's default capability set (cri/process.go).
var defaultCaps = []string{
	"CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD", "CAP_NET_RAW",
	"CAP_SETGID", "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP", "CAP_NET_BIND_SERVICE",
	"CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE",
}

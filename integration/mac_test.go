//go:build darwin

package integration

// The Mac bring-up kit (`make mac-test`): the daemon on the vz backend,
// signed ad hoc, driven by crictl, with the arm64 Linux test guest
// (booted by VZLinuxBootLoader) and, when MACVZ_MACOS_IMAGE names a
// macOS image with the macvz agent installed, a macOS pod. Linux CI
// cannot run these; `make darwin-check` type-checks them there.

import (
	"context"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/macvz/macvz/integration/guest"
	"github.com/macvz/macvz/integration/testregistry"
	"github.com/macvz/macvz/integration/testutil"
	"github.com/macvz/macvz/runtime/vz"
)

// macGuestEnv names the arm64 test guest's OCI layout: a Mac cannot
// build it (Debian's packages), so it is built on Linux with
// `make guest-image ARCH=arm64` and copied over.
const macGuestEnv = "MACVZ_GUEST_LAYOUT"

// macOSImageEnv names a macOS VM image (a Tart image pushed to a
// registry, with `macvz image install-agent` run on it) for TestMacOSPod.
const macOSImageEnv = "MACVZ_MACOS_IMAGE"

// newMacTest starts the daemon on the vz backend. MACVZ must name the
// signed bin/macvz (make mac-test does): the shim next to it creates the
// VMs and needs the virtualization entitlement.
func newMacTest(t *testing.T, extraTOML string) *vmTest {
	t.Helper()
	testutil.RequireRoot(t)
	requireCrictl(t)
	if os.Getenv("MACVZ") == "" {
		testutil.Unavailable(t, "run through `make mac-test`: MACVZ must name the signed bin/macvz (an unsigned shim cannot create VMs)")
	}
	reg := testregistry.Start(t, testregistry.Options{})
	v := &vmTest{reg: reg, pullHost: reg.Host()}
	v.d = startDaemonState(t, "", "", `backend = "vz"

[registry.hosts."`+v.pullHost+`"]
insecure = true
`+extraTOML)
	v.d.removePodsAtEnd(t)
	return v
}

// TestMacLinuxPod: an arm64 Linux pod on vz from pull to removal: the
// VM boots, the agent answers over vsock, exec and logs work, and the
// pod leaves nothing behind.
func TestMacLinuxPod(t *testing.T) {
	layout := os.Getenv(macGuestEnv)
	if layout == "" {
		testutil.Unavailable(t, "set %s to the arm64 test guest's OCI layout, built on Linux with `make guest-image ARCH=arm64` (bin/guest-arm64/oci)", macGuestEnv)
	}
	imgs, err := guest.Load(layout)
	if err != nil {
		t.Fatal(err)
	}
	v := newMacTest(t, "[vm]\nwarm_start = false\n")
	if err := v.reg.Push(context.Background(), "macvz/guest-arm64", guest.RefPlain, imgs[guest.RefPlain]); err != nil {
		t.Fatal(err)
	}
	ref := v.pullHost + "/macvz/guest-arm64:" + guest.RefPlain
	v.d.mustCrictl("pull", ref)

	podCfg := v.podConfig(t, "maclinux", nil)
	pod := v.runPod(t, podCfg)
	stateDir := v.inspectPod(t, pod).Info.StateDir
	start := time.Now()
	c := v.startCtr(t, pod, v.ctrConfig(t, "talker", ref, map[string]any{
		"command": []string{"/bin/sh", "-c", "echo hello-from-vz; trap 'exit 0' TERM; while :; do sleep 1; done"},
	}), podCfg)
	t.Logf("arm64 Linux VM booted on vz and its container started in %v", time.Since(start).Round(time.Millisecond))
	if got := v.execOut(t, c, "uname", "-m"); got != "aarch64" {
		t.Errorf("uname -m: %q", got)
	}
	if got := v.execOut(t, c, "cat", "/proc/1/comm"); got != "init" {
		t.Errorf("PID 1 is %q, want the agent (init)", got)
	}
	waitFor(t, "the container's output in its log", time.Minute, func() bool {
		out, _ := v.d.crictl("logs", c)
		return strings.Contains(out, "hello-from-vz")
	})
	v.d.mustCrictl("stop", "--timeout", "10", c)
	if st := v.inspect(t, c); st.Status.State != "CONTAINER_EXITED" {
		t.Errorf("after stop: %+v", st.Status)
	}
	v.d.mustCrictl("stopp", pod)
	v.d.mustCrictl("rmp", pod)
	if _, err := os.Stat(stateDir); !os.IsNotExist(err) {
		t.Errorf("the pod's state directory is left: %v", err)
	}
	if out := strings.TrimSpace(v.d.mustCrictl("pods", "-q")); out != "" {
		t.Errorf("pods left: %q", out)
	}
}

// TestMacOSPod: a macOS pod, cold then warm: pull, run, exec, logs,
// stop; a second pod of the image restores the first one's saved state
// (macOS 14 and later) and its clock is the host's.
func TestMacOSPod(t *testing.T) {
	img := os.Getenv(macOSImageEnv)
	if img == "" {
		testutil.Unavailable(t, "set %s to a macOS VM image with the macvz agent installed (a Tart image after `macvz image install-agent`, pushed to a registry)", macOSImageEnv)
	}
	v := newMacTest(t, "")
	v.d.mustCrictl("pull", img)
	major := 0
	if s, err := unix.Sysctl("kern.osproductversion"); err == nil {
		major = vz.MacOSMajor(s)
	}
	warm := vz.CanSave(major) == nil

	for i, name := range []string{"macos-cold", "macos-warm"} {
		podCfg := v.podConfig(t, name, nil)
		pod := v.runPod(t, podCfg)
		start := time.Now()
		vmc := v.startCtr(t, pod, v.ctrConfig(t, "vm", img, nil), podCfg)
		t.Logf("%s: the macOS VM answered in %v", name, time.Since(start).Round(time.Millisecond))
		if got := v.execOut(t, vmc, "sw_vers", "-productVersion"); got == "" {
			t.Errorf("%s: sw_vers printed nothing", name)
		}
		guestNow, err := strconv.ParseInt(v.execOut(t, vmc, "date", "+%s"), 10, 64)
		if err != nil {
			t.Errorf("%s: date in the guest: %v", name, err)
		} else if d := time.Since(time.Unix(guestNow, 0)); d > 10*time.Second || d < -10*time.Second {
			t.Errorf("%s: the guest's clock is %v off the host's", name, d)
		}
		c := v.startCtr(t, pod, v.ctrConfig(t, "talker", img, map[string]any{
			"command": []string{"/bin/sh", "-c", "echo hello-from-macos; sleep 3600"},
		}), podCfg)
		waitFor(t, "the macOS process's output in its log", time.Minute, func() bool {
			out, _ := v.d.crictl("logs", c)
			return strings.Contains(out, "hello-from-macos")
		})
		v.d.mustCrictl("stop", "--timeout", "10", c)
		v.d.mustCrictl("stopp", pod)
		v.d.mustCrictl("rmp", pod)
		if i == 1 && warm && !strings.Contains(v.d.log.String(), "VM restored from a saved state") {
			t.Errorf("the second macOS pod did not restore the first one's saved state (macOS %d); log:\n%s", major, v.d.log.String())
		}
	}
	if !warm {
		t.Logf("macOS %d: warm start is off on this host", major)
	}
	if out := strings.TrimSpace(v.d.mustCrictl("pods", "-q")); out != "" {
		t.Errorf("pods left: %q", out)
	}
}

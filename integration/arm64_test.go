//go:build linux

package integration

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/macvz/macvz/integration/guest"
	"github.com/macvz/macvz/integration/testimage"
	"github.com/macvz/macvz/integration/testutil"
)

// arm64GuestImages builds the arm64 test guest once per test binary: the
// agent built for linux/arm64 as /init, Debian's arm64 kernel Image and
// busybox (the packages of dpkg's arm64 architecture, which `make deps`
// adds), the images' config saying arch arm64. It is the kernel, initrd
// and agent a Mac's node VM boots.
var arm64GuestImages = sync.OnceValues(func() (map[string]testimage.Image, error) {
	dir, err := os.MkdirTemp(testTmp, "macvz-guest-arm64-")
	if err != nil {
		return nil, err
	}
	ctx := context.Background()
	agent := filepath.Join(dir, "macvz-agent")
	if err := guest.BuildStaticArch(ctx, guest.ArchARM64, guest.AgentPackage, agent); err != nil {
		return nil, err
	}
	res, err := guest.Build(ctx, guest.Options{Out: dir, Arch: guest.ArchARM64, Agent: agent, Cache: guest.DefaultCacheDir()})
	if err != nil {
		return nil, err
	}
	if err := checkExecHelper(res.Info); err != nil {
		return nil, err
	}
	return guest.Load(res.Layout)
})

// TestArm64GuestBoot runs a pod whose image is the arm64 test guest
// through the daemon and crictl: the VM is qemu-system-aarch64 (-M virt,
// TCG on this x86-64 host), the agent answers, and a container's exec of
// uname -m says aarch64.
func TestArm64GuestBoot(t *testing.T) {
	testutil.RequireRoot(t)
	testutil.RequireTool(t, "qemu-system-aarch64", "qemu-system-arm")
	imgs, err := arm64GuestImages()
	if err != nil {
		t.Fatalf("building the arm64 test guest: %v", err)
	}
	// Cold boots only: an arm64 guest is never restored from a saved
	// state (QEMU's virt machine has no vmgenid; see runtime/qemu).
	v := newVMTestIn(t, nil, "[vm]\nwarm_start = false\n")
	if err := v.reg.Push(context.Background(), "macvz/guest-arm64", guest.RefPlain, imgs[guest.RefPlain]); err != nil {
		t.Fatal(err)
	}
	ref := v.pullHost + "/macvz/guest-arm64:" + guest.RefPlain
	v.d.mustCrictl("pull", ref)

	podCfg := v.podConfig(t, "arm64", nil)
	pod := v.runPod(t, podCfg)
	stateDir := v.inspectPod(t, pod).Info.StateDir
	ctrCfg := v.ctrConfig(t, "arm", ref, map[string]any{
		"command": []string{"/bin/sh", "-c", "trap 'exit 0' TERM; while :; do sleep 1; done"},
	})
	start := time.Now()
	ctr := v.startCtr(t, pod, ctrCfg, podCfg)
	t.Logf("arm64 VM booted (TCG) and its container started in %v", time.Since(start).Round(time.Millisecond))
	// The daemon's account: "started" is QEMU's start to the agent
	// answering, "boot" the guest's own boot time.
	for _, l := range strings.Split(v.d.log.String(), "\n") {
		if strings.Contains(l, "VM booted") {
			t.Logf("daemon: %s", l)
		}
	}

	if got := v.execOut(t, ctr, "uname", "-m"); got != "aarch64" {
		t.Errorf("uname -m in the arm64 guest: %q, want aarch64", got)
	}
	var qemu []string
	for _, p := range processesUnder(stateDir) {
		if strings.Contains(p, "qemu-system-") {
			qemu = append(qemu, p)
		}
	}
	if len(qemu) != 1 || !strings.Contains(qemu[0], "qemu-system-aarch64") || !strings.Contains(qemu[0], " -M virt") {
		t.Errorf("the pod's QEMU is not one qemu-system-aarch64 -M virt: %q", qemu)
	}
	v.d.mustCrictl("stopp", pod)
	v.d.mustCrictl("rmp", pod)
}

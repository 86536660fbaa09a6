//go:build linux

package integration

import (
	"bytes"
	"context"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/macvz/macvz/integration/guest"
)

// TestHostileGuest runs the hostile test guest (runtime/agent/hostile.go,
// the guest's hostile tags) under the real daemon on the bridge-tap
// network, next to a normal pod: its agent lies about stdin counts and
// its addresses, writes noise on the agent channel and floods the
// console; a second hostile guest breaks every agent session with
// garbage. The daemon and the normal pod must not notice, the host must
// not change, and what must fail fails with a clear status.
func TestHostileGuest(t *testing.T) {
	n := newNetTestConf(t, "\n[vm]\nboot_timeout = \"20s\"\nconsole_log_max_bytes = 1048576\n")
	imgs, err := guestImages()
	if err != nil {
		t.Fatal(err)
	}
	refs := map[string]string{}
	for _, tag := range []string{guest.RefHostile, guest.RefHostileGarbage} {
		if err := n.reg.Push(context.Background(), "macvz/guest", tag, imgs[tag]); err != nil {
			t.Fatal(err)
		}
		refs[tag] = n.pullHost + "/macvz/guest:" + tag
		n.d.mustCrictl("pull", refs[tag])
	}
	snaps := n.snapshotDirs(t)
	sleeper := []string{"/bin/sh", "-c", `trap 'exit 0' TERM; while :; do sleep 1; done`}

	// The normal pod first: it gets 10.88.0.2, an address the hostile
	// guest claims.
	normalCfg := n.podConfig(t, "normal", map[string]any{"linux": map[string]any{}})
	normal := n.runPod(t, normalCfg)
	normalIP := n.podIP(t, normal)
	normalDir := n.inspectPod(t, normal).Info.StateDir
	nc := n.startCtr(t, normal, n.ctrConfig(t, "c", n.plain, map[string]any{"command": sleeper}), normalCfg)
	normalWorks := func(when string) {
		t.Helper()
		if out, err := n.d.crictl("exec", "-s", nc, "echo", "still here"); err != nil || !strings.Contains(out, "still here") {
			t.Errorf("%s: exec in the normal pod: %v\n%s", when, err, out)
		}
	}
	daemonAnswers := func(when string) {
		t.Helper()
		if err := n.d.cmd.Process.Signal(syscall.Signal(0)); err != nil || n.d.cmd.ProcessState != nil {
			t.Fatalf("%s: the daemon is gone: %v", when, err)
		}
		for _, args := range [][]string{{"version"}, {"pods"}, {"ps", "-a"}} {
			if out, err := n.d.crictl(args...); err != nil {
				t.Errorf("%s: crictl %s: %v\n%s", when, args[0], err, out)
			}
		}
	}

	hostileCfg := n.podConfig(t, "hostile", map[string]any{"linux": map[string]any{}})
	hostile := n.runPod(t, hostileCfg)
	hostileDir := n.inspectPod(t, hostile).Info.StateDir
	hc := n.startCtr(t, hostile, n.ctrConfig(t, "c", refs[guest.RefHostile], map[string]any{"command": sleeper}), hostileCfg)

	t.Run("the channel's noise is skipped", func(t *testing.T) {
		// The agent wrote noise after its WELCOME: the session works.
		if out := n.execOut(t, hc, "echo", "through the noise"); out != "through the noise" {
			t.Errorf("exec in the hostile pod: %q", out)
		}
		// ttrpc logs each message on a stream it does not know; the
		// shim keeps a few of those lines.
		if fi, err := os.Stat(filepath.Join(hostileDir, "shim.log")); err != nil || fi.Size() > 256<<10 {
			t.Errorf("shim.log after the noise: %v (%v)", fi.Size(), err)
		}
	})

	t.Run("false stdin counts end the session", func(t *testing.T) {
		// The agent answers len+1000, then 2^32-1.
		for i := range 2 {
			// The streaming server listens in the daemon's namespace.
			args := append([]string{"netns", "exec", n.ns.NSName()}, n.d.crictlArgs("exec", "-i", hc, "cat")...)
			cmd := exec.Command("ip", args...)
			cmd.Stdin = strings.NewReader("to the hostile guest\n")
			var out bytes.Buffer
			cmd.Stdout, cmd.Stderr = &out, &out
			done := make(chan error, 1)
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			go func() { done <- cmd.Wait() }()
			select {
			case err := <-done:
				// The session ends and says why.
				t.Logf("exec -i #%d: %v: %s", i+1, err, strings.TrimSpace(out.String()))
				if err == nil || !strings.Contains(out.String(), "the guest agent reported writing") {
					t.Errorf("exec -i #%d after a false stdin count: %v\n%s", i+1, err, out.String())
				}
			case <-time.After(2 * time.Minute):
				cmd.Process.Kill()
				<-done
				t.Fatalf("exec -i #%d did not end after a false stdin count:\n%s", i+1, out.String())
			}
		}
		if !strings.Contains(n.d.log.String(), "reported writing") {
			t.Errorf("the daemon's log does not say why the sessions ended")
		}
		daemonAnswers("after false stdin counts")
		normalWorks("after false stdin counts")
	})

	t.Run("false addresses are not the pod IP", func(t *testing.T) {
		ip := n.podIP(t, hostile)
		if ip == "" || ip == normalIP || !slices.Contains(n.reservations(t), ip) {
			t.Errorf("hostile pod IP %q (normal pod %q, IPAM %v)", ip, normalIP, n.reservations(t))
		}
		for _, claim := range []string{"127.0.0.1", "10.88.0.2", "10.0.2.15", "192.0.2.66", "10.88.255.254", "::1", "2001:db8::66"} {
			if net.ParseIP(ip).Equal(net.ParseIP(claim)) {
				t.Errorf("the hostile pod's IP is its false claim %s", claim)
			}
		}
		// Asked again after the guest answered Info, it stays.
		if again := n.podIP(t, hostile); again != ip {
			t.Errorf("pod IP changed from %s to %s", ip, again)
		}
	})

	t.Run("the console flood stays bounded on the host", func(t *testing.T) {
		var done string
		start, last := time.Now(), time.Now()
		waitFor(t, "the guest to flood its console", 5*time.Minute, func() bool {
			out, err := n.d.crictl("exec", "-s", hc, "cat", "/run/macvz-hostile/console-done")
			done = out
			if time.Since(last) > 30*time.Second {
				last = time.Now()
				fi, _ := os.Stat(filepath.Join(hostileDir, "console.log"))
				if fi != nil {
					t.Logf("after %v: console.log %d bytes", time.Since(start).Round(time.Second), fi.Size())
				}
			}
			return err == nil
		})
		t.Logf("the guest wrote %s", strings.TrimSpace(done))
		// The daemon keeps 1 MiB (vm.console_log_max_bytes) and one old
		// file: 2 MiB at most of the guest's 4 MiB.
		var total int64
		for _, f := range []string{"console.log", "console.log.1"} {
			fi, err := os.Stat(filepath.Join(hostileDir, f))
			if err != nil {
				t.Errorf("%s after a 4 MiB flood: %v (no rotation?)", f, err)
				continue
			}
			t.Logf("%s: %d bytes", f, fi.Size())
			total += fi.Size()
			if fi.Size() > 1<<20 {
				t.Errorf("%s is %d bytes after a 4 MiB flood, want at most 1 MiB", f, fi.Size())
			}
		}
		if _, err := os.Stat(filepath.Join(hostileDir, "console.log.2")); err == nil {
			t.Error("more than one old console log kept")
		}
		if total > 2<<20 {
			t.Errorf("the console logs hold %d bytes after a 4 MiB flood, want at most 2 MiB", total)
		}
		daemonAnswers("after the console flood")
		normalWorks("after the console flood")
	})

	t.Run("garbage on the channel fails the pod clearly", func(t *testing.T) {
		cfg := n.podConfig(t, "garbage", map[string]any{"linux": map[string]any{}})
		pod := n.runPod(t, cfg)
		dir := n.inspectPod(t, pod).Info.StateDir
		removed := false
		defer func() {
			if !removed {
				n.d.crictl("stopp", pod)
				n.d.crictl("rmp", pod)
			}
		}()
		ctr := strings.TrimSpace(n.d.mustCrictl("create", pod, n.ctrConfig(t, "c", refs[guest.RefHostileGarbage], map[string]any{"command": sleeper}), cfg))
		out, err := n.d.crictl("start", ctr)
		if err == nil {
			t.Fatalf("a container started on a guest that breaks every agent session:\n%s", out)
		}
		t.Logf("start: %s", out)
		if !strings.Contains(out, "agent") {
			t.Errorf("the error does not say the agent failed:\n%s", out)
		}
		if st := n.inspect(t, ctr); st.Status.State == "CONTAINER_RUNNING" {
			t.Errorf("container state %s", st.Status.State)
		}
		daemonAnswers("after garbage on the channel")
		normalWorks("after garbage on the channel")
		if fi, err := os.Stat(filepath.Join(dir, "shim.log")); err == nil && fi.Size() > 1<<20 {
			t.Errorf("shim.log of the garbage pod: %d bytes", fi.Size())
		}
		n.d.mustCrictl("stopp", pod)
		n.d.mustCrictl("rmp", pod)
		removed = true
		if ps := processesUnder(dir); len(ps) > 0 {
			t.Errorf("processes left for the garbage pod:\n%s", strings.Join(ps, "\n"))
		}
	})

	// The hostile pod still stops and goes away cleanly, and so does
	// the normal one.
	daemonAnswers("at the end")
	n.d.mustCrictl("stopp", hostile, normal)
	n.d.mustCrictl("rmp", hostile, normal)
	n.assertGone(t, hostile, hostileDir, snaps)
	n.assertGone(t, normal, normalDir, snaps)
	n.assertNetClean(t, "after the pods are removed")
}

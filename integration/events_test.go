package integration

import (
	"bufio"
	"context"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/macvz/macvz/internal/logbuf"
)

// eventTemplate prints one line per event: type, ID, the sandbox's state
// and each container's state and exit code.
const eventTemplate = `{{.containerEventType}} {{.containerId}} {{.podSandboxStatus.state}}{{range .containersStatuses}} {{.state}}:{{.exitCode}}{{end}}`

// TestContainerEvents: `crictl events` sees a pod's life in order, sandbox
// events under the sandbox's ID, with the statuses after each change; a
// process that exits on its own is reported stopped with no CRI call to
// notice it; and the daemon's shutdown ends the stream at once instead of
// waiting out its grace period for it.
func TestContainerEvents(t *testing.T) {
	v := newVMTest(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	cmd := exec.CommandContext(ctx, requireCrictl(t), "--config", v.d.crictlConfig(),
		"--runtime-endpoint", "unix://"+v.d.socket, "events", "-o", "go-template", "--template", eventTemplate)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr logbuf.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	lines := make(chan string, 100)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			if l := strings.TrimSpace(sc.Text()); l != "" {
				lines <- l
			}
		}
		close(lines)
		exited <- cmd.Wait()
	}()
	waitFor(t, "crictl events to subscribe", 30*time.Second, func() bool {
		return strings.Contains(v.d.log.String(), "container events stream opened")
	})
	next := func(what string) []string {
		t.Helper()
		select {
		case l, ok := <-lines:
			if !ok {
				t.Fatalf("crictl events ended before %s; stderr:\n%s", what, stderr.String())
			}
			return strings.Fields(l)
		case <-time.After(2 * time.Minute):
			t.Fatalf("no event for %s in 2 minutes", what)
		}
		return nil
	}
	expect := func(what, typ, id, sbState string, ctrStates ...string) {
		t.Helper()
		f := next(what)
		want := append([]string{typ, id, sbState}, ctrStates...)
		if strings.Join(f, " ") != strings.Join(want, " ") {
			t.Errorf("%s: event %q, want %q", what, strings.Join(f, " "), strings.Join(want, " "))
		}
	}

	podCfg := v.podConfig(t, "events", nil)
	pod := v.runPod(t, podCfg)
	expect("runp", "CONTAINER_CREATED_EVENT", pod, "SANDBOX_READY")
	expect("runp", "CONTAINER_STARTED_EVENT", pod, "SANDBOX_READY")
	// It exits by itself, a few seconds after it started.
	ctr := v.startCtr(t, pod, v.ctrConfig(t, "short", v.plain, map[string]any{"command": []string{"/bin/sh", "-c", "sleep 3; exit 3"}}), podCfg)
	expect("create", "CONTAINER_CREATED_EVENT", ctr, "SANDBOX_READY", "CONTAINER_CREATED:0")
	expect("start", "CONTAINER_STARTED_EVENT", ctr, "SANDBOX_READY", "CONTAINER_RUNNING:0")
	expect("the process's own exit", "CONTAINER_STOPPED_EVENT", ctr, "SANDBOX_READY", "CONTAINER_EXITED:3")
	v.d.mustCrictl("rm", ctr)
	expect("rm", "CONTAINER_DELETED_EVENT", ctr, "SANDBOX_READY")
	v.d.mustCrictl("stopp", pod)
	expect("stopp", "CONTAINER_STOPPED_EVENT", pod, "SANDBOX_NOTREADY")
	v.d.mustCrictl("rmp", pod)
	expect("rmp", "CONTAINER_DELETED_EVENT", pod, "SANDBOX_NOTREADY")

	start := time.Now()
	v.d.stop()
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("the daemon took %v to stop with an events stream open (its grace period is 10s)", d)
	}
	select {
	case <-exited:
	case <-time.After(10 * time.Second):
		t.Errorf("crictl events still runs after the daemon stopped")
	}
	// The test's cleanup removes what is left through the daemon.
	v.d.start()
}

//go:build linux

package integration

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/macvz/macvz/integration/cluster"
	"github.com/macvz/macvz/integration/guest"
)

func init() {
	registerClusterScenario(40, "streaming", (*clusterTest).testStreaming)
}

// talkerSelector selects the streaming scenario's own pods.
const talkerSelector = "app=streaming-talker"

// talkerScript prints "tick N" every half second (in the background) and
// echoes every line read from stdin as "got LINE": what kubectl logs,
// logs -f and attach -i look at. The line "exit" ends it (exit code 7),
// for kubectl logs --previous.
const talkerScript = `i=0; while :; do i=$((i+1)); echo "tick $i"; sleep 0.5; done & ` +
	`while read -r l; do if [ "$l" = exit ]; then kill $!; echo exiting; exit 7; fi; echo "got $l"; done; echo "stdin closed"; wait`

// talkerManifest is one talker pod, on one node (the scheduler places it
// by the node's hostname label), with stdin open for attach.
const talkerManifest = `apiVersion: v1
kind: Pod
metadata:
  name: %[1]s
  namespace: default
  labels:
    app: streaming-talker
spec:
  runtimeClassName: macvz
  terminationGracePeriodSeconds: 2
  nodeSelector:
    kubernetes.io/hostname: %[2]s
  containers:
  - name: talker
    image: %[3]s
    command: ["/bin/sh", "-c", %[4]q]
    stdin: true
`

// testStreaming: kubectl exec (plain, with stdin, -it on a terminal with
// a resize), port-forward and cp against the pods scenario's web pod on
// each node, logs, logs -f and attach -i against a talker pod of its own
// on each node, and the exec round trip (kubectl through the apiserver
// and kubelet, against crictl on the node): all of it through the
// apiserver and kubelet to macvz's streaming server.
func (c *clusterTest) testStreaming(t *testing.T) {
	web := c.streamWebPods(t)

	// The talkers boot (a VM each) while the web pods are exercised.
	plain := strings.TrimSuffix(c.httpd, guest.RefHTTPD) + guest.RefPlain
	talkers := map[string]string{}
	var manifests []string
	for _, n := range c.nodes {
		talkers[n.Name] = "talker-" + n.Name
		manifests = append(manifests, fmt.Sprintf(talkerManifest, talkers[n.Name], n.Name, plain, talkerScript))
	}
	t.Cleanup(func() {
		if out, err := c.cp.Kubectl("delete", "pods", "-l", talkerSelector, "--ignore-not-found", "--wait=true", "--timeout=3m"); err != nil {
			t.Errorf("deleting the talker pods: %v\n%s\n%s", err, out, c.cp.Dump(talkerSelector))
		}
	})
	c.cp.Apply(t, strings.Join(manifests, "---\n"))

	t.Run("exec", func(t *testing.T) {
		for _, n := range c.nodes {
			pod := web[n.Name]
			stdout, stderr, code, err := c.streamKubectlRun("", "exec", pod, "--", "sh", "-c", "echo to-stdout; echo to-stderr >&2; exit 3")
			if code != 3 || stdout != "to-stdout\n" || !strings.Contains(stderr, "to-stderr") {
				c.fatal(t, "app=web", "node %s: kubectl exec %s -- sh -c '...; exit 3': exit code %d (%v), want 3; stdout %q, want \"to-stdout\\n\"; stderr %q, want to-stderr in it",
					n.Name, pod, code, err, stdout, stderr)
			}
			stdout, stderr, code, err = c.streamKubectlRun("through stdin\nsecond line\n", "exec", "-i", pod, "--", "cat")
			if code != 0 || stdout != "through stdin\nsecond line\n" {
				c.fatal(t, "app=web", "node %s: kubectl exec -i %s -- cat: exit code %d (%v), stdout %q, want the two lines sent; stderr %q", n.Name, pod, code, err, stdout, stderr)
			}
			t.Logf("node %s: kubectl exec: stdout, stderr, stdin and exit code 3 through the apiserver", n.Name)
		}
	})

	t.Run("exec -it", func(t *testing.T) {
		for _, n := range c.nodes {
			pod := web[n.Name]
			term := newTmux(t, 120, 40, c.cp.KubectlCommand("exec", "-it", pod, "--", "sh")...)
			c.streamScreen(t, term, n.Name, "/ #")
			term.send("tty; echo sum=$((6*7))")
			c.streamScreen(t, term, n.Name, "/dev/pts/", "sum=42")
			if !term.sendUntil("stty size", "40 120") {
				c.fatal(t, "app=web", "node %s: kubectl exec -it %s -- sh never showed the terminal's size 40 120 in 30s:\n%s", n.Name, pod, term.screen())
			}
			if screen := term.screen(); !regexp.MustCompile(`(?m)^/dev/pts/[0-9]+\s*$`).MatchString(screen) {
				c.fatal(t, "app=web", "node %s: `tty` in kubectl exec -it %s -- sh did not answer /dev/pts/N (no terminal in the guest?):\n%s", n.Name, pod, screen)
			}
			term.resize(100, 30)
			if !term.sendUntil("stty size", "30 100") {
				c.fatal(t, "app=web", "node %s: kubectl exec -it %s -- sh never showed the new size 30 100 in 30s:\n%s", n.Name, pod, term.screen())
			}
			term.send("exit")
			// kubectl ends with the shell, and the session with it.
			deadline := time.Now().Add(30 * time.Second)
			for exec.Command("tmux", "has-session", "-t", term.name).Run() == nil {
				if time.Now().After(deadline) {
					c.fatal(t, "app=web", "node %s: kubectl exec -it %s -- sh did not end 30s after `exit`:\n%s", n.Name, pod, term.screen())
				}
				time.Sleep(200 * time.Millisecond)
			}
			t.Logf("node %s: kubectl exec -it: a pty (/dev/pts/N), 40x120 then resized to 30x100, exit ends kubectl", n.Name)
		}
	})

	t.Run("port-forward", func(t *testing.T) {
		for _, n := range c.nodes {
			pod := web[n.Name]
			pf := c.streamBg(t, "port-forward", "pod/"+pod, ":80")
			re := regexp.MustCompile(`Forwarding from 127\.0\.0\.1:(\d+) -> 80`)
			line, ok := pf.waitLine(30*time.Second, func(l string) bool { return re.MatchString(l) })
			if !ok {
				c.fatal(t, "app=web", "node %s: kubectl port-forward pod/%s :80 did not report its local port in 30s:\n%s", n.Name, pod, pf.describe())
			}
			addr := "127.0.0.1:" + re.FindStringSubmatch(line)[1]
			// Two connections one after the other: each is a stream of its
			// own through the apiserver and kubelet.
			for i := range 2 {
				page, err := c.streamFetch(addr)
				if err != nil || !strings.Contains(page, strings.TrimSpace(guest.IndexHTML)) {
					c.fatal(t, "app=web", "node %s: GET http://%s/ (kubectl port-forward to pod %s), connection %d, from the control plane's namespace: %v\n%s\nkubectl:\n%s",
						n.Name, addr, pod, i+1, err, page, pf.describe())
				}
			}
			pf.stop()
			t.Logf("node %s: kubectl port-forward pod/%s %s -> 80: the page arrived, twice", n.Name, pod, addr)
		}
	})

	t.Run("cp", func(t *testing.T) {
		dir := t.TempDir()
		data := make([]byte, 256<<10)
		rand.Read(data)
		sum := sha256.Sum256(data)
		in := filepath.Join(dir, "in.bin")
		if err := os.WriteFile(in, data, 0o644); err != nil {
			t.Fatal(err)
		}
		for _, n := range c.nodes {
			pod := web[n.Name]
			remote := "/tmp/cp-" + n.Name + ".bin"
			if out, err := c.cp.Kubectl("cp", in, pod+":"+remote); err != nil {
				c.fatal(t, "app=web", "node %s: kubectl cp %s %s:%s (needs tar in the guest): %v\n%s", n.Name, in, pod, remote, err, out)
			}
			// In the guest, the same bytes.
			got, err := c.cp.Kubectl("exec", pod, "--", "sha256sum", remote)
			if err != nil || !strings.HasPrefix(got, hex.EncodeToString(sum[:])) {
				c.fatal(t, "app=web", "node %s: after kubectl cp into %s, sha256sum %s in the guest: %v\n%q, want %x", n.Name, pod, remote, err, got, sum)
			}
			out := filepath.Join(dir, "out-"+n.Name+".bin")
			if o, err := c.cp.Kubectl("cp", pod+":"+remote, out); err != nil {
				c.fatal(t, "app=web", "node %s: kubectl cp %s:%s %s: %v\n%s", n.Name, pod, remote, out, err, o)
			}
			back, err := os.ReadFile(out)
			if err != nil || !bytes.Equal(back, data) {
				c.fatal(t, "app=web", "node %s: the file copied back out of %s: %v, %d bytes (sha256 %x), want the %d bytes sent (sha256 %x)",
					n.Name, pod, err, len(back), sha256.Sum256(back), len(data), sum)
			}
			c.cp.Kubectl("exec", pod, "--", "rm", "-f", remote)
			t.Logf("node %s: kubectl cp of %d KiB into pod %s and back out: equal", n.Name, len(data)>>10, pod)
		}
	})

	// The talkers, Running (and Ready) on their nodes.
	c.streamWaitTalkers(t, talkers)

	t.Run("logs", func(t *testing.T) {
		for _, n := range c.nodes {
			pod := talkers[n.Name]
			var out string
			var err error
			deadline := time.Now().Add(30 * time.Second)
			for {
				out, err = c.cp.Kubectl("logs", pod)
				if err == nil && streamLastTick(out) >= 3 {
					break
				}
				if time.Now().After(deadline) {
					c.fatal(t, talkerSelector, "node %s: kubectl logs %s has no \"tick 3\" (the pod prints a tick every 0.5s) 30s after it was Running: %v\n%s", n.Name, pod, err, out)
				}
				time.Sleep(time.Second)
			}
			if strings.Contains(out, "stdin closed") {
				c.fatal(t, talkerSelector, "node %s: pod %s saw its stdin closed before anyone attached (stdin: true must stay open):\n%s", n.Name, pod, out)
			}
			if !strings.HasPrefix(out, "tick 1\ntick 2\n") {
				c.fatal(t, talkerSelector, "node %s: kubectl logs %s does not start with the first lines printed:\n%s", n.Name, pod, out)
			}
			from := streamLastTick(out)
			t.Logf("node %s: kubectl logs %s: %d lines so far", n.Name, pod, strings.Count(out, "\n"))

			// -f: what was printed, then new lines as they come.
			start := time.Now()
			f := c.streamBg(t, "logs", "-f", pod)
			if _, ok := f.waitLine(30*time.Second, func(l string) bool { return l == "tick 1" }); !ok {
				c.fatal(t, talkerSelector, "node %s: kubectl logs -f %s did not print the past lines in 30s:\n%s", n.Name, pod, f.describe())
			}
			want := fmt.Sprintf("tick %d", from+8) // 4s past the snapshot
			if _, ok := f.waitLine(20*time.Second, func(l string) bool { return l == want }); !ok {
				c.fatal(t, talkerSelector, "node %s: kubectl logs -f %s: no %q within 20s (the snapshot before ended at tick %d): following does not deliver new lines:\n%s",
					n.Name, pod, want, from, f.describe())
			}
			arrived := time.Since(start)
			if ok, how := f.exited(); ok {
				c.fatal(t, talkerSelector, "node %s: kubectl logs -f %s ended (%s) while the pod runs", n.Name, pod, how)
			}
			f.stop()
			t.Logf("node %s: kubectl logs -f %s: %q arrived %v after starting to follow; stopped", n.Name, pod, want, arrived.Round(10*time.Millisecond))
		}
	})

	t.Run("attach", func(t *testing.T) {
		for _, n := range c.nodes {
			pod := talkers[n.Name]
			a := c.streamBgStdin(t, "attach", "-i", pod, "-c", "talker")
			// Attached once the pod's output streams through it.
			if _, ok := a.waitLine(30*time.Second, func(l string) bool { return strings.HasPrefix(l, "tick ") }); !ok {
				c.fatal(t, talkerSelector, "node %s: kubectl attach -i %s shows none of the pod's output in 30s:\n%s", n.Name, pod, a.describe())
			}
			msg := "hello-through-attach-" + n.Name
			if _, err := io.WriteString(a.stdin, msg+"\n"); err != nil {
				c.fatal(t, talkerSelector, "node %s: writing to kubectl attach's stdin: %v\n%s", n.Name, err, a.describe())
			}
			if _, ok := a.waitLine(20*time.Second, func(l string) bool { return l == "got "+msg }); !ok {
				logs, _ := c.cp.Kubectl("logs", "--tail=20", pod)
				c.fatal(t, talkerSelector, "node %s: the line sent through kubectl attach -i %s did not come back as %q within 20s\nkubectl:\n%s\nkubectl logs --tail=20:\n%s",
					n.Name, pod, "got "+msg, a.describe(), logs)
			}
			a.stop()
			// In the container's log too, and detaching left it running
			// with its stdin open.
			deadline := time.Now().Add(20 * time.Second)
			for {
				logs, err := c.cp.Kubectl("logs", pod)
				if err == nil && strings.Contains(logs, "got "+msg) && !strings.Contains(logs, "stdin closed") {
					break
				}
				if time.Now().After(deadline) {
					c.fatal(t, talkerSelector, "node %s: kubectl logs %s after the attach: want %q and no \"stdin closed\": %v\n%s", n.Name, pod, "got "+msg, err, lastLines(logs, 20))
				}
				time.Sleep(time.Second)
			}
			for _, p := range c.getPods(t, talkerSelector) {
				if p.Metadata.Name == pod && p.Status.Phase != "Running" {
					c.fatal(t, talkerSelector, "node %s: pod %s is %s after kubectl attach ended, want Running", n.Name, pod, p.Status.Phase)
				}
			}
			t.Logf("node %s: kubectl attach -i %s: the line sent came back in its output", n.Name, pod)
		}
	})

	t.Run("logs --previous", func(t *testing.T) {
		// The talker on the first node ends (a line "exit" through
		// attach); kubelet restarts its container in the same pod.
		n := c.nodes[0]
		pod := talkers[n.Name]
		restarts := func() string {
			out, _ := c.cp.Kubectl("get", "pod", pod, "-o", "jsonpath={.status.containerStatuses[0].restartCount}")
			return strings.TrimSpace(out)
		}
		if r := restarts(); r != "0" {
			c.fatal(t, talkerSelector, "node %s: pod %s has restartCount %q before its container was made to exit, want 0", n.Name, pod, r)
		}
		// kubectl attach ends with the container; the restart below is
		// the verdict, its output is for the log.
		out, err := c.cp.KubectlIn([]byte("exit\n"), "attach", "-i", pod, "-c", "talker")
		t.Logf("node %s: kubectl attach -i %s with \"exit\": %v; last lines:\n%s", n.Name, pod, err, lastLines(out, 3))
		deadline := time.Now().Add(2 * time.Minute)
		for {
			ready := false
			for _, p := range c.getPods(t, talkerSelector) {
				if p.Metadata.Name == pod {
					ready = p.Status.Phase == "Running" && condition(p.Status.Conditions, "Ready").Status == "True"
				}
			}
			if r := restarts(); r == "1" && ready {
				break
			}
			if time.Now().After(deadline) {
				c.fatal(t, talkerSelector, "node %s: pod %s: restartCount %q (want 1) or not Ready 2m after its container exited", n.Name, pod, restarts())
			}
			time.Sleep(time.Second)
		}
		prev, err := c.cp.Kubectl("logs", "--previous", pod)
		if err != nil || !strings.HasPrefix(prev, "tick 1\n") || !strings.HasSuffix(prev, "exiting\n") {
			c.fatal(t, talkerSelector, "node %s: kubectl logs --previous %s: want the first container's lines, from \"tick 1\" to \"exiting\": %v\n%s",
				n.Name, pod, err, lastLines(prev, 20))
		}
		cur, err := c.cp.Kubectl("logs", pod)
		if err != nil || strings.Contains(cur, "exiting") || strings.Contains(cur, "got hello") {
			c.fatal(t, talkerSelector, "node %s: kubectl logs %s after the restart: want only the new container's lines: %v\n%s", n.Name, pod, err, lastLines(cur, 20))
		}
		t.Logf("node %s: kubectl logs --previous %s: the exited container's %d lines, ending with \"exiting\"", n.Name, pod, strings.Count(prev, "\n"))
	})

	t.Run("exec round trip", func(t *testing.T) {
		const runs = 10
		crictl := requireCrictl(t)
		for _, n := range c.nodes {
			pod := web[n.Name]
			ctr, err := n.Crictl("ps", "-q", "--name", "^httpd$", "--label", "io.kubernetes.pod.name="+pod)
			ctr = strings.TrimSpace(ctr)
			if err != nil || ctr == "" || strings.Contains(ctr, "\n") {
				c.fatal(t, "app=web", "node %s: crictl ps for pod %s's httpd container: %v\n%q", n.Name, pod, err, ctr)
			}
			// Interleaved, after one warm-up each, so load on the shared
			// machine weighs on both alike. Each is a process started
			// (kubectl, crictl: nsenter execs them), so the baseline is
			// the same process doing no request.
			kubectlExec := func() error {
				out, err := c.cp.Kubectl("exec", pod, "--", "true")
				if err != nil {
					return fmt.Errorf("kubectl exec %s -- true: %v\n%s", pod, err, out)
				}
				return nil
			}
			crictlExec := func() error {
				out, err := streamCrictl(n, crictl, "exec", ctr, "true")
				if err != nil {
					return fmt.Errorf("crictl exec %s true: %v\n%s", ctr, err, out)
				}
				return nil
			}
			var viaKubectl, viaCrictl, kubectlStart, crictlStart []time.Duration
			timed := func(into *[]time.Duration, f func() error) {
				start := time.Now()
				if err := f(); err != nil {
					c.fatal(t, "app=web", "node %s: %v", n.Name, err)
				}
				if into != nil {
					*into = append(*into, time.Since(start))
				}
			}
			timed(nil, kubectlExec)
			timed(nil, crictlExec)
			for range runs {
				timed(&viaKubectl, kubectlExec)
				timed(&viaCrictl, crictlExec)
				timed(&kubectlStart, func() error {
					_, err := c.cp.Kubectl("version", "--client")
					return err
				})
				timed(&crictlStart, func() error {
					_, err := streamCrictl(n, crictl, "--version")
					return err
				})
			}
			k, cr := streamMedian(viaKubectl), streamMedian(viaCrictl)
			ks, cs := streamMedian(kubectlStart), streamMedian(crictlStart)
			ms := func(d time.Duration) time.Duration { return d.Round(time.Millisecond) }
			t.Logf("exec round trip on %s, median of %d [min..max]: kubectl exec (apiserver → kubelet → macvz) %v [%v..%v]; crictl exec in the node's namespaces %v [%v..%v]; "+
				"the control plane adds %v. Without the processes' start (kubectl version --client %v, crictl --version %v): kubectl exec %v, crictl exec %v",
				n.Name, runs, ms(k), ms(slices.Min(viaKubectl)), ms(slices.Max(viaKubectl)), ms(cr), ms(slices.Min(viaCrictl)), ms(slices.Max(viaCrictl)),
				ms(k-cr), ms(ks), ms(cs), ms(k-ks), ms(cr-cs))
		}
	})
}

// streamWebPods is the pods scenario's web pod on each node, by node.
func (c *clusterTest) streamWebPods(t testing.TB) map[string]string {
	t.Helper()
	out := map[string]string{}
	for _, p := range c.getPods(t, "app=web") {
		if p.Status.Phase == "Running" && condition(p.Status.Conditions, "Ready").Status == "True" {
			out[p.Spec.NodeName] = p.Metadata.Name
		}
	}
	for _, n := range c.nodes {
		if out[n.Name] == "" {
			c.fatal(t, "app=web", "no Ready pod of the Deployment web on node %s (the pods scenario makes one per node: run it first, e.g. -run 'TestCluster/(nodes|pods|streaming)$')", n.Name)
		}
	}
	return out
}

// streamWaitTalkers waits for the talker pods to be Running and Ready on their
// nodes.
func (c *clusterTest) streamWaitTalkers(t testing.TB, talkers map[string]string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Minute)
	for {
		ready := 0
		var state []string
		for _, p := range c.getPods(t, talkerSelector) {
			r := condition(p.Status.Conditions, "Ready")
			state = append(state, fmt.Sprintf("%s on %q: %s, Ready=%s (%s)", p.Metadata.Name, p.Spec.NodeName, p.Status.Phase, r.Status, r.Reason))
			if p.Status.Phase == "Running" && r.Status == "True" {
				if talkers[p.Spec.NodeName] != p.Metadata.Name {
					c.fatal(t, talkerSelector, "pod %s runs on node %s, not where its nodeSelector puts it", p.Metadata.Name, p.Spec.NodeName)
				}
				ready++
			}
		}
		if ready == len(talkers) {
			return
		}
		if time.Now().After(deadline) {
			c.fatal(t, talkerSelector, "the talker pods are not all Running and Ready after 5m:\n%s", strings.Join(state, "\n"))
		}
		time.Sleep(2 * time.Second)
	}
}

// streamScreen waits until term shows every one of want; failing, the
// cluster's state is in the message.
func (c *clusterTest) streamScreen(t testing.TB, term *tmuxSession, node string, want ...string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		screen := term.screen()
		missing := slices.DeleteFunc(slices.Clone(want), func(w string) bool { return strings.Contains(screen, w) })
		if len(missing) == 0 {
			return
		}
		if time.Now().After(deadline) {
			c.fatal(t, "app=web", "node %s: kubectl exec -it on a terminal never showed %q in 30s; the terminal:\n%s", node, missing, screen)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// streamKubectlRun runs kubectl (in the control plane's namespace) with stdin
// and returns its stdout, stderr and exit code.
func (c *clusterTest) streamKubectlRun(stdin string, args ...string) (string, string, int, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	argv := c.cp.KubectlCommand(args...)
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if stdin != "" {
		cmd.Stdin = strings.NewReader(stdin)
	}
	err := cmd.Run()
	code := 0
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		code = ee.ExitCode()
	} else if err != nil {
		code = -1
	}
	return stdout.String(), stderr.String(), code, err
}

// streamFetch is GET / from addr, dialled inside the control plane's
// namespace (where kubectl port-forward listens).
func (c *clusterTest) streamFetch(addr string) (string, error) {
	conn, err := c.cp.NS.Dial("tcp", addr)
	if err != nil {
		return "", err
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(30 * time.Second))
	if _, err := io.WriteString(conn, "GET / HTTP/1.0\r\nHost: localhost\r\n\r\n"); err != nil {
		return "", err
	}
	b, err := io.ReadAll(conn)
	return string(b), err
}

// streamKubectl is a kubectl running in the background (port-forward, logs
// -f, attach), its stdout read line by line.
type streamKubectl struct {
	argv   []string
	cmd    *exec.Cmd
	stdin  io.WriteCloser
	mu     sync.Mutex
	lines  []string
	stderr bytes.Buffer
	more   chan struct{} // signalled on every line and at EOF
	done   chan struct{}
}

func (c *clusterTest) streamBg(t testing.TB, args ...string) *streamKubectl {
	t.Helper()
	return c.streamStart(t, false, args...)
}

func (c *clusterTest) streamBgStdin(t testing.TB, args ...string) *streamKubectl {
	t.Helper()
	return c.streamStart(t, true, args...)
}

func (c *clusterTest) streamStart(t testing.TB, withStdin bool, args ...string) *streamKubectl {
	t.Helper()
	b := &streamKubectl{argv: args, more: make(chan struct{}, 1), done: make(chan struct{})}
	argv := c.cp.KubectlCommand(args...)
	b.cmd = exec.Command(argv[0], argv[1:]...)
	b.cmd.Stderr = &streamLockedWriter{mu: &b.mu, w: &b.stderr}
	out, err := b.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if withStdin {
		if b.stdin, err = b.cmd.StdinPipe(); err != nil {
			t.Fatal(err)
		}
	}
	if err := b.cmd.Start(); err != nil {
		t.Fatalf("starting kubectl %s: %v", strings.Join(args, " "), err)
	}
	t.Cleanup(b.stop)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			b.mu.Lock()
			b.lines = append(b.lines, sc.Text())
			b.mu.Unlock()
			b.signal()
		}
		b.cmd.Wait()
		close(b.done)
		b.signal()
	}()
	return b
}

func (b *streamKubectl) signal() {
	select {
	case b.more <- struct{}{}:
	default:
	}
}

// waitLine waits for a line of stdout matching ok (looking at every line
// so far first).
func (b *streamKubectl) waitLine(timeout time.Duration, match func(string) bool) (string, bool) {
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	seen := 0
	for {
		b.mu.Lock()
		lines := b.lines[seen:]
		seen = len(b.lines)
		b.mu.Unlock()
		for _, l := range lines {
			if match(l) {
				return l, true
			}
		}
		select {
		case <-b.more:
		case <-timer.C:
			return "", false
		}
		if ended, _ := b.exited(); ended {
			// Read what is left, once.
			b.mu.Lock()
			lines := b.lines[seen:]
			b.mu.Unlock()
			for _, l := range lines {
				if match(l) {
					return l, true
				}
			}
			return "", false
		}
	}
}

func (b *streamKubectl) exited() (bool, string) {
	select {
	case <-b.done:
		return true, b.cmd.ProcessState.String()
	default:
		return false, ""
	}
}

// stop kills kubectl (ending its stream) and waits for it.
func (b *streamKubectl) stop() {
	if ok, _ := b.exited(); ok {
		return
	}
	if b.stdin != nil {
		b.stdin.Close()
	}
	b.cmd.Process.Kill()
	<-b.done
}

// describe is kubectl's command, state, stdout's last lines and stderr.
func (b *streamKubectl) describe() string {
	state := "running"
	if ok, how := b.exited(); ok {
		state = "exited: " + how
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	return fmt.Sprintf("kubectl %s (%s)\nstdout, last 20 of %d lines:\n%s\nstderr:\n%s", strings.Join(b.argv, " "), state, len(b.lines),
		strings.Join(b.lines[max(0, len(b.lines)-20):], "\n"), b.stderr.String())
}

type streamLockedWriter struct {
	mu *sync.Mutex
	w  io.Writer
}

func (l *streamLockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

// streamCrictl is crictl against the node's macvz run inside the node's
// network and mount namespaces, as kubelet runs: the streaming calls
// (exec, attach, port-forward) need it, as macvz's streaming server
// listens on the node's 127.0.0.1, which Node.Crictl (run in the host's
// namespace) cannot reach.
func streamCrictl(n *cluster.Node, crictl string, args ...string) (string, error) {
	return n.Exec(crictl, append([]string{"--config", filepath.Join(n.Dir, "crictl.yaml"), "--runtime-endpoint", "unix://" + n.Socket,
		"--image-endpoint", "unix://" + n.Socket, "--timeout", "1m"}, args...)...)
}

// streamLastTick is the highest N of the "tick N" lines in out (0 for none).
func streamLastTick(out string) int {
	last := 0
	for _, l := range strings.Split(out, "\n") {
		if v, ok := strings.CutPrefix(l, "tick "); ok {
			if n, err := strconv.Atoi(v); err == nil && n > last {
				last = n
			}
		}
	}
	return last
}

func streamMedian(ds []time.Duration) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

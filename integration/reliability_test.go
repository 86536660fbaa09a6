//go:build linux

package integration

import (
	"context"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/macvz/macvz/integration/testimage"
)

// Reliability (issue 13): the daemon killed with pods running, leaks over
// many pod lifecycles, and kill -9 of the daemon, a shim or QEMU in the
// middle of each CRI verb. Every pod here is on the bridge-tap network
// (newNetTest), so taps, host-local reservations and nftables rules are
// exercised too. Numbers are logged (tests) or reported (benchmarks),
// never asserted as times.
//
//	sudo go test -count=1 -v -run 'TestDaemonKillPods|TestPodCycleLeaks|TestKillDuringVerb' ./integration/
//	sudo MACVZ_CYCLES=200 go test -count=1 -v -run TestPodCycleLeaks ./integration/
//	sudo go test -run '^$' -bench BenchmarkDaemonKill -benchtime 1x ./integration/   # MACVZ_KILL_PODS=20

// envInt is a positive integer from the environment, def when unset.
func envInt(t testing.TB, name string, def int) int {
	t.Helper()
	v := os.Getenv(name)
	if v == "" {
		return def
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 1 {
		t.Fatalf("%s=%q: want a positive integer", name, v)
	}
	return n
}

// sleeperPod is the CRI config of a pod on the pod network.
func sleeperPod(d *daemon, name string) *runtimeapi.PodSandboxConfig {
	return &runtimeapi.PodSandboxConfig{
		Metadata:     &runtimeapi.PodSandboxMetadata{Name: name, Namespace: "reliability", Uid: name + "-uid"},
		Hostname:     name,
		LogDirectory: filepath.Join(d.dir, "logs", name),
		Linux:        &runtimeapi.LinuxPodSandboxConfig{},
	}
}

// startSleepers runs n pods named <prefix><from>… over the CRI, each with
// one container sleeping, and returns their IDs.
func startSleepers(tb testing.TB, v *vmTest, rt runtimeapi.RuntimeServiceClient, prefix string, from, n int) (pods, ctrs []string) {
	tb.Helper()
	ctx := context.Background()
	for i := from; i < from+n; i++ {
		pod, ctr, err := runSleeper(ctx, rt, sleeperPod(v.d, prefix+strconv.Itoa(i)), v.plain)
		if err != nil {
			tb.Fatalf("pod %d: %v", i, err)
		}
		pods, ctrs = append(pods, pod), append(ctrs, ctr)
	}
	return pods, ctrs
}

// ctrRecord is what a daemon restart must not change in a container.
type ctrRecord struct {
	state   runtimeapi.ContainerState
	started int64
}

func ctrRecords(tb testing.TB, rt runtimeapi.RuntimeServiceClient, ctrs []string) map[string]ctrRecord {
	tb.Helper()
	out := map[string]ctrRecord{}
	for _, c := range ctrs {
		st, err := rt.ContainerStatus(context.Background(), &runtimeapi.ContainerStatusRequest{ContainerId: c})
		if err != nil {
			tb.Fatalf("status of %s: %v", c, err)
		}
		out[c] = ctrRecord{st.GetStatus().GetState(), st.GetStatus().GetStartedAt()}
	}
	return out
}

// crashAndTime is d.crash (kill -9, restart) and the time from the kill
// until every container of ctrs answers an ExecSync, asked in parallel on
// a fresh connection.
func crashAndTime(tb testing.TB, d *daemon, ctrs []string) time.Duration {
	tb.Helper()
	start := time.Now()
	d.crash()
	rt := d.runtimeClient(tb)
	errs := make([]error, len(ctrs))
	var wg sync.WaitGroup
	for i, c := range ctrs {
		wg.Go(func() {
			deadline := time.Now().Add(2 * time.Minute)
			for {
				ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
				r, err := rt.ExecSync(ctx, &runtimeapi.ExecSyncRequest{ContainerId: c, Cmd: []string{"echo", "ok"}, Timeout: 15})
				cancel()
				if err == nil && strings.TrimSpace(string(r.GetStdout())) == "ok" {
					return
				}
				if err == nil {
					err = fmt.Errorf("exit %d, stdout %q", r.GetExitCode(), r.GetStdout())
				}
				if time.Now().After(deadline) {
					errs[i] = err
					return
				}
				time.Sleep(20 * time.Millisecond)
			}
		})
	}
	wg.Wait()
	took := time.Since(start)
	for i, err := range errs {
		if err != nil {
			tb.Errorf("container %s does not answer after the restart: %v", ctrs[i], err)
		}
	}
	return took
}

// TestDaemonKillPods: kill -9 of the daemon with N pods (MACVZ_KILL_PODS,
// 3 by default) each running one container: after the restart every pod
// is ready, every container runs as before (same ID, same start time),
// and exec answers in each.
func TestDaemonKillPods(t *testing.T) {
	n := newNetTest(t)
	count := envInt(t, "MACVZ_KILL_PODS", 3)
	rt := n.d.runtimeClient(t)
	pods, ctrs := startSleepers(t, n.vmTest, rt, "kill", 0, count)
	before := ctrRecords(t, rt, ctrs)
	took := crashAndTime(t, n.d, ctrs)
	t.Logf("%d pods: %v from the kill to every container answering", count, took)

	ready := n.d.mustCrictl("pods", "-q", "--state", "ready")
	running := n.d.mustCrictl("ps", "-q", "--state", "running")
	for i, c := range ctrs {
		if !strings.Contains(ready, pods[i]) {
			t.Errorf("pod %s is not ready after the restart: %q", pods[i], ready)
		}
		if !strings.Contains(running, c) {
			t.Errorf("container %s is not running after the restart: %q", c, running)
		}
		if got := n.execOut(t, c, "echo", "still here"); got != "still here" {
			t.Errorf("exec in %s after the restart: %q", c, got)
		}
		if all := strings.Fields(n.d.mustCrictl("ps", "-a", "-q", "--pod", pods[i])); len(all) != 1 || all[0] != c {
			t.Errorf("containers of pod %s after the restart: %v, want only %s", pods[i], all, c)
		}
	}
	after := ctrRecords(t, n.d.runtimeClient(t), ctrs)
	for _, c := range ctrs {
		if after[c] != before[c] || after[c].state != runtimeapi.ContainerState_CONTAINER_RUNNING {
			t.Errorf("container %s: %+v before the kill, %+v after (restarted?)", c, before[c], after[c])
		}
	}
	n.d.mustCrictl("rmp", "-f", "-a")
	n.assertNetClean(t, "after removing the pods")
}

// BenchmarkDaemonKill measures the time from kill -9 of the daemon to
// every container answering an ExecSync, with MACVZ_KILL_PODS pods (20 by
// default) each running one container, against the same with one pod.
func BenchmarkDaemonKill(b *testing.B) {
	count := envInt(b, "MACVZ_KILL_PODS", 20)
	n := newNetTestConf(b, "")
	rt := n.d.runtimeClient(b)
	_, one := startSleepers(b, n.vmTest, rt, "bench", 0, 1)
	var base, full []time.Duration
	for range b.N {
		base = append(base, crashAndTime(b, n.d, one))
	}
	rt = n.d.runtimeClient(b)
	_, rest := startSleepers(b, n.vmTest, rt, "bench", 1, count-1)
	all := append(one, rest...)
	before := ctrRecords(b, rt, all)
	for range b.N {
		full = append(full, crashAndTime(b, n.d, all))
	}
	after := ctrRecords(b, n.d.runtimeClient(b), all)
	for _, c := range all {
		if after[c] != before[c] {
			b.Errorf("container %s changed over the restarts: %+v → %+v", c, before[c], after[c])
		}
	}
	b.ReportMetric(float64(count), "pods")
	b.ReportMetric(float64(p50(base).Milliseconds()), "restart-1pod-ms")
	b.ReportMetric(float64(p50(full).Milliseconds()), "restart-all-ms")
	b.ReportMetric(float64(p50(full))/float64(p50(base)), "ratio")
	b.Logf("1 pod: %v; %d pods: %v", base, count, full)
}

// daemonStats are the daemon's resources a leak would grow.
type daemonStats struct {
	fds, threads, goroutines int
	rss                      int64
}

func (s daemonStats) String() string {
	return fmt.Sprintf("fds %d, goroutines %d, threads %d, RSS %.1f MiB", s.fds, s.goroutines, s.threads, float64(s.rss)/(1<<20))
}

// stats reads the daemon's open fds and threads from /proc, its RSS, and
// its goroutine count from the verbose CRI Status (cri/status.go).
func (d *daemon) stats(t testing.TB, rt runtimeapi.RuntimeServiceClient) daemonStats {
	t.Helper()
	pid := d.cmd.Process.Pid // ip netns exec execs macvz in place
	var s daemonStats
	fds, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		t.Fatal(err)
	}
	tasks, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	if err != nil {
		t.Fatal(err)
	}
	s.fds, s.threads = len(fds), len(tasks)
	s.rss, _ = rssOf(t, pid)
	st, err := rt.Status(context.Background(), &runtimeapi.StatusRequest{Verbose: true})
	if err != nil {
		t.Fatal(err)
	}
	if s.goroutines, err = strconv.Atoi(st.GetInfo()["goroutines"]); err != nil {
		t.Fatalf("the verbose status has no goroutine count: %v", err)
	}
	return s
}

// diskState is what the daemon keeps on disk: every path under its state
// and root directories, and how many keys each bucket of its bbolt
// databases holds.
type diskState struct {
	paths map[string]bool
	keys  map[string]int // "<db>:<bucket>/<nested bucket>…" → keys
}

func takeDiskState(t testing.TB, d *daemon) diskState {
	t.Helper()
	s := diskState{paths: map[string]bool{}, keys: map[string]int{}}
	var dbs []string
	for _, top := range []string{d.state, d.root()} {
		filepath.WalkDir(top, func(p string, e fs.DirEntry, err error) error {
			if err != nil {
				return nil
			}
			s.paths[p] = true
			if e.Type().IsRegular() && strings.HasSuffix(p, ".db") {
				dbs = append(dbs, p)
			}
			return nil
		})
	}
	// The daemon holds the databases' locks: count the keys of copies.
	tmp := t.TempDir()
	for i, db := range dbs {
		data, err := os.ReadFile(db)
		if err != nil {
			t.Fatal(err)
		}
		cp := filepath.Join(tmp, strconv.Itoa(i)+".db")
		if err := os.WriteFile(cp, data, 0o600); err != nil {
			t.Fatal(err)
		}
		bdb, err := bolt.Open(cp, 0o600, &bolt.Options{ReadOnly: true, Timeout: time.Second})
		if err != nil {
			t.Fatalf("opening a copy of %s: %v", db, err)
		}
		var walk func(prefix string, b *bolt.Bucket)
		walk = func(prefix string, b *bolt.Bucket) {
			s.keys[prefix] += 0
			b.ForEach(func(k, v []byte) error {
				if v == nil {
					walk(prefix+"/"+string(k), b.Bucket(k))
				} else {
					s.keys[prefix]++
				}
				return nil
			})
		}
		bdb.View(func(tx *bolt.Tx) error {
			return tx.ForEach(func(name []byte, b *bolt.Bucket) error {
				walk(filepath.Base(db)+":"+string(name), b)
				return nil
			})
		})
		bdb.Close()
	}
	return s
}

// leaksSince lists what s has that base had not: new paths, new buckets
// and buckets with more keys.
func (s diskState) leaksSince(base diskState) []string {
	var out []string
	for p := range s.paths {
		if !base.paths[p] {
			out = append(out, "file "+p)
		}
	}
	for k, n := range s.keys {
		if b, ok := base.keys[k]; !ok || n > b {
			out = append(out, fmt.Sprintf("bbolt %s: %d keys (had %d)", k, n, b))
		}
	}
	slices.Sort(out)
	return out
}

// mountsIn lists the mounts at or below dir in the mount namespace of
// pid (the daemon in a test namespace has its own: ip netns exec).
func mountsIn(pid int, dir string) []string {
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/mountinfo", pid))
	var out []string
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) > 4 && strings.HasPrefix(f[4], dir) {
			out = append(out, f[4])
		}
	}
	return out
}

// assertNothingLeft: no process under the daemon's state, no mount under its directory,
// no sandbox state directory, no pod, no container, nothing of the
// network, no disk clone beyond snaps, nothing on disk or in bbolt that
// base had not.
func (n *netTest) assertNothingLeft(t *testing.T, when string, snaps int, base diskState) {
	t.Helper()
	if ps := processesUnder(n.d.state); len(ps) > 0 {
		t.Errorf("%s: processes left:\n%s", when, strings.Join(ps, "\n"))
	}
	ms := append(mountsUnder(n.d.dir), mountsIn(n.d.cmd.Process.Pid, n.d.dir)...)
	if len(ms) > 0 {
		t.Errorf("%s: mounts left: %v", when, ms)
	}
	if ents, _ := os.ReadDir(filepath.Join(n.d.state, "sandboxes")); len(ents) > 0 {
		t.Errorf("%s: sandbox state directories left: %v", when, ents)
	}
	if out, _ := n.d.crictl("pods", "-q"); strings.TrimSpace(out) != "" {
		t.Errorf("%s: pods left: %q", when, out)
	}
	if out, _ := n.d.crictl("ps", "-a", "-q"); strings.TrimSpace(out) != "" {
		t.Errorf("%s: containers left: %q", when, out)
	}
	n.assertNetClean(t, when)
	if got := n.snapshotDirs(t); got != snaps {
		t.Errorf("%s: %d snapshot directories, had %d (a disk clone is left)", when, got, snaps)
	}
	if l := takeDiskState(t, n.d).leaksSince(base); len(l) > 0 {
		t.Errorf("%s: left on disk:\n%s", when, strings.Join(l, "\n"))
	}
}

// TestPodCycleLeaks: MACVZ_CYCLES (20 by default; 200 for the long run)
// times a pod on the bridge-tap network with a volume is created,
// started, exec'd into, stopped and removed. The daemon's fds and
// goroutines come back within a few of where they were, its RSS within
// 20 MiB, and nothing is left (processes, mounts, taps, rules, IPAM
// reservations, files, bbolt records).
func TestPodCycleLeaks(t *testing.T) {
	n := newNetTest(t)
	cycles := envInt(t, "MACVZ_CYCLES", 20)
	vol := t.TempDir()
	if err := os.WriteFile(filepath.Join(vol, "in.txt"), []byte("cycle\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	cycle := func(i int) {
		t.Helper()
		name := "cycle" + strconv.Itoa(i)
		podCfg := n.podConfig(t, name, map[string]any{"hostname": name, "linux": map[string]any{}})
		pod := n.runPod(t, podCfg)
		c := n.startCtr(t, pod, n.ctrConfig(t, "main", n.plain, map[string]any{
			"command": []string{"sleep", "3600"},
			"mounts":  []map[string]any{{"container_path": "/data", "host_path": vol, "readonly": true}},
		}), podCfg)
		if got := n.execOut(t, c, "cat", "/data/in.txt"); got != "cycle" {
			t.Fatalf("cycle %d: exec read %q from the volume", i, got)
		}
		n.d.mustCrictl("stop", "--timeout", "10", c)
		n.d.mustCrictl("rm", c)
		n.d.mustCrictl("stopp", pod)
		n.d.mustCrictl("rmp", pod)
	}
	// The first pod boots cold and saves the warm state; caches fill.
	cycle(0)
	rt := n.d.runtimeClient(t)
	time.Sleep(3 * time.Second)
	start := n.d.stats(t, rt)
	snaps := n.snapshotDirs(t)
	disk := takeDiskState(t, n.d)
	t.Logf("watching %d paths and %d bbolt buckets for leftovers", len(disk.paths), len(disk.keys))

	began := time.Now()
	for i := 1; i <= cycles; i++ {
		cycle(i)
	}
	per := time.Since(began) / time.Duration(cycles)

	// Settle: connections and their goroutines close after the calls.
	// (The start count may be higher than the end: it includes the
	// registry connections of the first pulls, idle until 90 s pass.)
	var end daemonStats
	deadline := time.Now().Add(30 * time.Second)
	for {
		end = n.d.stats(t, rt)
		if (end.fds <= start.fds+3 && end.goroutines <= start.goroutines+5) || time.Now().After(deadline) {
			break
		}
		time.Sleep(time.Second)
	}
	t.Logf("%d cycles, %v per cycle; daemon before: %v; after: %v", cycles, per.Round(time.Millisecond), start, end)
	if end.fds > start.fds+3 {
		t.Errorf("open fds: %d after %d cycles, %d before", end.fds, cycles, start.fds)
	}
	if end.goroutines > start.goroutines+5 {
		t.Errorf("goroutines: %d after %d cycles, %d before", end.goroutines, cycles, start.goroutines)
	}
	if end.rss > start.rss+20<<20 {
		t.Errorf("RSS: %.1f MiB after %d cycles, %.1f MiB before", float64(end.rss)/(1<<20), cycles, float64(start.rss)/(1<<20))
	}
	n.assertNothingLeft(t, fmt.Sprintf("after %d cycles", cycles), snaps, disk)
}

// TestKillDuringVerb: kill -9 of the daemon, the pod's shim or its QEMU
// while a CRI verb is half done (held there by the daemon's test-only
// MACVZ_TEST_PAUSE hook, cri/testpause.go; a pull is slowed by the
// registry instead), then the daemon restarted if it died. The
// interrupted call succeeds or fails with a gRPC status, the next call
// (the same verb again, or stop/remove) does what it should, and once
// the pod is removed nothing is left.
func TestKillDuringVerb(t *testing.T) {
	n := newNetTest(t)
	rt := func() runtimeapi.RuntimeServiceClient { return n.d.runtimeClient(t) }
	ctx := context.Background()
	// A first pod saves the warm state: every later boot restores it.
	warmCfg := n.podConfig(t, "warmup", map[string]any{"linux": map[string]any{}})
	warm := n.runPod(t, warmCfg)
	n.startCtr(t, warm, n.ctrConfig(t, "main", n.plain, map[string]any{"command": []string{"sleep", "3600"}}), warmCfg)
	n.d.mustCrictl("rmp", "-f", warm)
	snaps := n.snapshotDirs(t)
	base := takeDiskState(t, n.d)

	// restart restarts the daemon gracefully, holding the verb point
	// (the pods' shims live on); "" = no pause.
	paused := ""
	restart := func(point string) {
		if point == paused {
			return
		}
		n.d.stop()
		if point != "" {
			os.Setenv("MACVZ_TEST_PAUSE", point+"=4s")
			defer os.Unsetenv("MACVZ_TEST_PAUSE")
		}
		n.d.start()
		paused = point
	}
	// crictl runs crictl with t's own failure (n.d.mustCrictl fails the
	// parent test).
	crictl := func(t *testing.T, args ...string) string {
		t.Helper()
		out, err := n.d.crictl(args...)
		if err != nil {
			t.Fatalf("crictl %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return strings.TrimSpace(out)
	}
	type result struct {
		out string
		err error
	}
	// during runs crictl args in the background, waits for the daemon to
	// reach its pause (or, with wait, for wait to hold), kills the victim
	// (daemon, shim or qemu of the sandbox in stateDir), restarts the
	// daemon if it was the victim, and returns what the call answered.
	during := func(t *testing.T, victim, stateDir string, wait func() bool, args ...string) result {
		t.Helper()
		pauses := strings.Count(n.d.log.String(), "TEST PAUSE")
		done := make(chan result, 1)
		go func() {
			out, err := n.d.crictl(args...)
			done <- result{out, err}
		}()
		if wait == nil {
			wait = func() bool { return strings.Count(n.d.log.String(), "TEST PAUSE") > pauses }
		}
		waitFor(t, "the call to be under way", time.Minute, wait)
		switch victim {
		case "daemon":
			n.d.crash() // no MACVZ_TEST_PAUSE now: the new daemon does not pause
			paused = ""
		default:
			pid, err := readPidFile(filepath.Join(stateDir, victim+".pid"))
			if err != nil {
				t.Fatal(err)
			}
			if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
				t.Fatalf("killing the %s: %v", victim, err)
			}
		}
		var r result
		select {
		case r = <-done:
		case <-time.After(2 * time.Minute):
			t.Fatalf("crictl %v still runs 2 minutes after the kill", args)
		}
		t.Logf("crictl %s after the %s was killed: err %v\n%s", strings.Join(args, " "), victim, r.err, strings.TrimSpace(r.out))
		// The daemon answered: a success or a gRPC status, nothing else.
		if victim != "daemon" && r.err != nil && !strings.Contains(r.out, "code = ") {
			t.Errorf("crictl %v failed without a gRPC status: %s", args, r.out)
		}
		return r
	}
	// pod runs a pod (and, with cmd, one running container).
	pod := func(t *testing.T, name string, cmd ...string) (podCfg, id, stateDir, ctr string) {
		t.Helper()
		podCfg = n.podConfig(t, name, map[string]any{"linux": map[string]any{}})
		id = crictl(t, "runp", podCfg)
		stateDir = n.inspectPod(t, id).Info.StateDir
		if len(cmd) > 0 {
			ctr = crictl(t, "create", id, n.ctrConfig(t, "main", n.plain, map[string]any{"command": cmd}), podCfg)
			crictl(t, "start", ctr)
		}
		return podCfg, id, stateDir, ctr
	}
	state := func(t *testing.T, ctr string) runtimeapi.ContainerState {
		t.Helper()
		st, err := rt().ContainerStatus(ctx, &runtimeapi.ContainerStatusRequest{ContainerId: ctr})
		if err != nil {
			t.Fatalf("status of %s: %v", ctr, err)
		}
		return st.GetStatus().GetState()
	}
	removeAll := func(t *testing.T) {
		t.Helper()
		pods, err := rt().ListPodSandbox(ctx, &runtimeapi.ListPodSandboxRequest{})
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range pods.GetItems() {
			if _, err := rt().RemovePodSandbox(ctx, &runtimeapi.RemovePodSandboxRequest{PodSandboxId: p.GetId()}); err != nil {
				t.Errorf("removing pod %s: %v", p.GetId(), err)
			}
		}
	}
	// A TERM-proof container: a stop has to wait, then kill.
	stubborn := []string{"sh", "-c", "trap '' TERM; while :; do sleep 1; done"}
	sleeper := []string{"sleep", "3600"}

	type tc struct {
		verb, victim string
		run          func(t *testing.T, victim string)
	}
	var cases []tc
	add := func(verb string, victims []string, run func(t *testing.T, victim string)) {
		for _, v := range victims {
			cases = append(cases, tc{verb, v, run})
		}
	}
	daemonOnly := []string{"daemon"}
	all := []string{"daemon", "shim", "qemu"}

	add("pull", daemonOnly, func(t *testing.T, victim string) {
		restart("")
		pushed := push(t, n.reg, "reliability/pull", built(t)(testimage.OCI(testimage.OCIOptions{Seed: 13, RandomLayerSize: 3 << 20})), "1")
		ref := n.pullHost + "/reliability/pull:1"
		var big testimage.Blob
		for _, bl := range pushed.Blobs {
			if bl.Desc.Size > big.Desc.Size {
				big = bl
			}
		}
		n.reg.SlowBlobs(256 << 10) // 3 MiB in ~12 s
		defer n.reg.ClearFaults()
		reqs := n.reg.Requests(big.Desc.Digest)
		var since time.Time
		during(t, victim, "", func() bool {
			if n.reg.Requests(big.Desc.Digest) == reqs {
				return false
			}
			if since.IsZero() {
				since = time.Now()
			}
			return time.Since(since) > time.Second // well into the download
		}, "pull", ref)
		n.reg.ClearFaults()
		if out, err := n.d.crictl("inspecti", ref); err == nil {
			t.Errorf("the interrupted pull left an image:\n%s", out)
		}
		crictl(t, "pull", ref)
		crictl(t, "rmi", ref)
	})
	add("runp", daemonOnly, func(t *testing.T, victim string) {
		restart("runp")
		cfg := n.podConfig(t, "runp-"+victim, map[string]any{"linux": map[string]any{}})
		during(t, victim, "", nil, "runp", cfg)
		if out := crictl(t, "pods", "-q"); out != "" {
			t.Errorf("the interrupted runp left pods: %q", out)
		}
		n.assertNetClean(t, "after the interrupted runp")
		id := crictl(t, "runp", cfg)
		if ip := n.podIP(t, id); !strings.HasPrefix(ip, "10.88.") {
			t.Errorf("the retried pod's IP: %q", ip)
		}
	})
	add("create", daemonOnly, func(t *testing.T, victim string) {
		restart("")
		podCfg, id, _, _ := pod(t, "create-"+victim)
		restart("create")
		ctrCfg := n.ctrConfig(t, "main", n.plain, map[string]any{"command": sleeper})
		during(t, victim, "", nil, "create", id, ctrCfg, podCfg)
		// The record made before the kill stays (Created) and keeps its
		// name, as with containerd: the retry is refused with
		// AlreadyExists naming it until it is removed (kubelet's GC
		// does that), then succeeds.
		c, err := n.d.crictl("create", id, ctrCfg, podCfg)
		if err != nil {
			orphan := crictl(t, "ps", "-a", "-q", "--pod", id)
			if !strings.Contains(c, "code = AlreadyExists") || orphan == "" || !strings.Contains(c, orphan) {
				t.Fatalf("retried create: %v, want success or AlreadyExists naming the container left (%q):\n%s", err, orphan, c)
			}
			crictl(t, "rm", orphan)
			c = crictl(t, "create", id, ctrCfg, podCfg)
		}
		c = strings.TrimSpace(c)
		crictl(t, "start", c)
		if got := n.execOut(t, c, "echo", "ok"); got != "ok" {
			t.Errorf("exec in the retried container: %q", got)
		}
	})
	add("start", all, func(t *testing.T, victim string) {
		restart("")
		podCfg, id, stateDir, _ := pod(t, "start-"+victim)
		c := crictl(t, "create", id, n.ctrConfig(t, "main", n.plain, map[string]any{"command": sleeper}), podCfg)
		restart("start")
		r := during(t, victim, stateDir, nil, "start", c)
		if victim == "daemon" {
			// The VM booted; the process never started: start again.
			crictl(t, "start", c)
			if got := n.execOut(t, c, "echo", "ok"); got != "ok" {
				t.Errorf("exec after the retried start: %q", got)
			}
			return
		}
		if r.err == nil {
			t.Errorf("start succeeded although the %s was killed", victim)
		}
		if st := state(t, c); st != runtimeapi.ContainerState_CONTAINER_EXITED {
			t.Errorf("container after its failed start: %s", st)
		}
		waitFor(t, "the pod to be NotReady", time.Minute, func() bool { return n.inspectPod(t, id).Status.State == "SANDBOX_NOTREADY" })
		if out, err := n.d.crictl("start", c); err == nil || !strings.Contains(out, "code = ") {
			t.Errorf("starting it again: err %v, want a gRPC status:\n%s", err, out)
		}
	})
	add("stop", all, func(t *testing.T, victim string) {
		restart("")
		_, id, stateDir, c := pod(t, "stop-"+victim, stubborn...)
		restart("stop")
		during(t, victim, stateDir, nil, "stop", "--timeout", "30", c)
		if _, err := rt().StopContainer(ctx, &runtimeapi.StopContainerRequest{ContainerId: c, Timeout: 1}); err != nil {
			t.Errorf("stopping again: %v", err)
		}
		if st := state(t, c); st != runtimeapi.ContainerState_CONTAINER_EXITED {
			t.Errorf("container after the second stop: %s", st)
		}
		if victim != "daemon" {
			if st := n.inspectPod(t, id).Status.State; st != "SANDBOX_NOTREADY" {
				t.Errorf("pod whose %s was killed: %s", victim, st)
			}
		}
	})
	add("rm", all, func(t *testing.T, victim string) {
		restart("")
		_, _, stateDir, c := pod(t, "rm-"+victim, sleeper...)
		restart("rm")
		during(t, victim, stateDir, nil, "rm", "-f", c)
		if _, err := rt().RemoveContainer(ctx, &runtimeapi.RemoveContainerRequest{ContainerId: c}); err != nil {
			t.Errorf("removing again: %v", err)
		}
		if out := crictl(t, "ps", "-a", "-q"); out != "" {
			t.Errorf("containers after the removal: %q", out)
		}
	})
	add("rmp", daemonOnly, func(t *testing.T, victim string) {
		restart("")
		_, id, _, _ := pod(t, "rmp-"+victim, sleeper...)
		restart("rmp")
		during(t, victim, "", nil, "rmp", "-f", id)
		if _, err := rt().RemovePodSandbox(ctx, &runtimeapi.RemovePodSandboxRequest{PodSandboxId: id}); err != nil {
			t.Errorf("removing again: %v", err)
		}
	})

	for _, c := range cases {
		t.Run(c.verb+"/"+c.victim, func(t *testing.T) {
			c.run(t, c.victim)
			restart("")
			removeAll(t)
			n.assertNothingLeft(t, "after "+c.verb+" with the "+c.victim+" killed", snaps, base)
		})
	}
}

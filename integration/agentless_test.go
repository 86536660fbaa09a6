package integration

import (
	"encoding/json"
	"strings"
	"testing"
	"time"
)

// TestPodAgentless: a pod whose image has no macvz agent (annotation
// macvz.io/agent: none, as a stock Tart image needs) runs the VM itself
// without waiting for one; everything that needs the agent answers
// FailedPrecondition naming it and `macvz image install-agent`, and
// nothing is left behind. The test guest has an agent; the daemon just
// never talks to it, which is what an agentless image looks like from
// the host.
func TestPodAgentless(t *testing.T) {
	v := newVMTest(t)
	snapsBefore := v.snapshotDirs(t)

	// A value other than none/required is refused before anything exists.
	bad := v.podConfig(t, "agent-bad", map[string]any{"annotations": map[string]string{"macvz.io/agent": "off"}})
	if out, err := v.d.crictl("runp", bad); err == nil || !strings.Contains(out, "InvalidArgument") || !strings.Contains(out, "macvz.io/agent") {
		t.Errorf("runp with macvz.io/agent=off: %v: %s", err, out)
	}
	if out := v.d.mustCrictl("pods", "-q"); strings.TrimSpace(out) != "" {
		t.Errorf("a refused sandbox is listed: %q", out)
	}

	podCfg := v.podConfig(t, "agentless", map[string]any{"annotations": map[string]string{"macvz.io/agent": "none"}})
	pod := v.runPod(t, podCfg)
	stateDir := v.inspectPod(t, pod).Info.StateDir

	// A container with a command needs the agent: refused at create.
	out, err := v.d.crictl("create", pod, v.ctrConfig(t, "cmd", v.plain, map[string]any{"command": []string{"sleep", "60"}}), podCfg)
	if err == nil || !strings.Contains(out, "FailedPrecondition") || !strings.Contains(out, "install-agent") {
		t.Errorf("create a container with a command in an agentless pod: %v: %s", err, out)
	}

	start := time.Now()
	vmc := v.startCtr(t, pod, v.ctrConfig(t, "vm", v.plain, nil), podCfg)
	t.Logf("the VM itself started in %v (no agent awaited)", time.Since(start).Round(time.Millisecond))
	if st := v.inspect(t, vmc); st.Status.State != "CONTAINER_RUNNING" {
		t.Fatalf("VM container: %s", st.Status.State)
	}
	if ps := processesUnder(stateDir); len(ps) == 0 {
		t.Errorf("no VM process runs for the agentless pod")
	}

	// What needs the agent says so, at once.
	for _, args := range [][]string{
		{"exec", "-s", vmc, "true"},
		{"exec", "--timeout", "5", "-s", vmc, "true"}, // ExecSync, as an exec probe
		{"exec", vmc, "true"},                         // the streaming exec: the streaming server keeps the message, not the code
	} {
		t0 := time.Now()
		out, err := v.d.crictl(args...)
		code := args[1] != "-s" && args[1] != "--timeout" || strings.Contains(out, "FailedPrecondition")
		if err == nil || !code || !strings.Contains(out, "without the macvz guest agent") || !strings.Contains(out, "install-agent") {
			t.Errorf("crictl %s in an agentless pod: %v: %s", strings.Join(args, " "), err, out)
		}
		if d := time.Since(t0); d > 30*time.Second {
			t.Logf("crictl %s took %v to fail", strings.Join(args, " "), d)
		}
	}

	// Stats are the host's view of the VM.
	var stats struct {
		Stats []struct {
			Memory struct {
				WorkingSetBytes struct {
					Value string `json:"value"`
				} `json:"workingSetBytes"`
			} `json:"memory"`
		} `json:"stats"`
	}
	if err := json.Unmarshal([]byte(v.d.mustCrictl("stats", "-o", "json", "--id", vmc)), &stats); err != nil {
		t.Errorf("crictl stats: %v", err)
	} else if len(stats.Stats) != 1 || stats.Stats[0].Memory.WorkingSetBytes.Value == "" || stats.Stats[0].Memory.WorkingSetBytes.Value == "0" {
		t.Errorf("stats of the agentless VM: %+v", stats.Stats)
	}

	v.d.mustCrictl("stop", "--timeout", "10", vmc)
	if st := v.inspect(t, vmc); st.Status.State != "CONTAINER_EXITED" {
		t.Errorf("VM container after stop: %+v", st.Status)
	}
	if ps := processesUnder(stateDir); len(ps) > 0 {
		t.Errorf("processes left after the agentless VM stopped:\n%s", strings.Join(ps, "\n"))
	}
	v.d.mustCrictl("stopp", pod)
	v.d.mustCrictl("stopp", pod) // idempotent
	v.d.mustCrictl("rmp", pod)
	v.assertGone(t, pod, stateDir, snapsBefore)
}

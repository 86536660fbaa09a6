package integration

import (
	"context"
	"encoding/json"
	"testing"
	"time"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// poolReady is how many pooled VMs the daemon's verbose status says are
// ready, over all images (crictl info's warmStart).
func poolReady(t testing.TB, d *daemon) int {
	t.Helper()
	st, err := d.runtimeClient(t).Status(context.Background(), &runtimeapi.StatusRequest{Verbose: true})
	if err != nil {
		t.Fatal(err)
	}
	var warm struct {
		Pool      int            `json:"pool"`
		PoolReady map[string]int `json:"poolReady"`
	}
	if err := json.Unmarshal([]byte(st.GetInfo()["warmStart"]), &warm); err != nil {
		t.Fatalf("warmStart in the verbose status: %v", err)
	}
	if warm.Pool == 0 {
		t.Fatalf("the verbose status says the warm pool is off: %s", st.GetInfo()["warmStart"])
	}
	total := 0
	for _, c := range warm.PoolReady {
		total += c
	}
	return total
}

// waitPoolFor waits until d has a pooled VM ready.
func waitPoolFor(t testing.TB, d *daemon) {
	t.Helper()
	deadline := time.Now().Add(3 * time.Minute)
	for poolReady(t, d) < 1 {
		if time.Now().After(deadline) {
			t.Fatalf("no pooled VM ready after 3 minutes; log:\n%s", d.log.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

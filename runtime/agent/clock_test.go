package agent

import (
	"errors"
	"sync"
	"testing"
	"time"

	api "github.com/macvz/macvz/runtime/agentapi"
)

// A ping carrying the host's time sets the guest's clock when they are
// apart (a VM restored from a saved state wakes with the clock of the
// save), through the system's setClock only.
func TestPingSetsClock(t *testing.T) {
	var mu sync.Mutex
	var set []time.Time
	fail := false
	ta := startAgent(t, func(c *config) {
		c.system = true
		c.setClock = func(t time.Time) error {
			mu.Lock()
			defer mu.Unlock()
			set = append(set, t)
			if fail {
				return errors.New("operation not permitted")
			}
			return nil
		}
	})
	ctx := ctxT(t)
	ping := func(host time.Time) []time.Time {
		t.Helper()
		mu.Lock()
		set = nil
		mu.Unlock()
		req := &api.PingRequest{}
		if !host.IsZero() {
			req.HostTimeUnixNano = host.UnixNano()
		}
		if _, err := ta.client.Ping(ctx, req); err != nil {
			t.Fatal(err)
		}
		mu.Lock()
		defer mu.Unlock()
		return set
	}
	// The host is an hour ahead: the guest was saved an hour ago.
	later := time.Now().Add(time.Hour)
	if got := ping(later); len(got) != 1 || !got[0].Equal(time.Unix(0, later.UnixNano())) {
		t.Errorf("an hour behind the host: clock set to %v, want %v", got, later)
	}
	if got := ping(time.Now().Add(-time.Hour)); len(got) != 1 {
		t.Errorf("an hour ahead of the host: clock set %d times", len(got))
	}
	if got := ping(time.Now()); len(got) != 0 {
		t.Errorf("in step with the host: clock set to %v", got)
	}
	if got := ping(time.Time{}); len(got) != 0 {
		t.Errorf("no host time: clock set to %v", got)
	}
	// A clock that cannot be set does not fail the ping.
	mu.Lock()
	fail = true
	mu.Unlock()
	if got := ping(later); len(got) != 1 {
		t.Errorf("failing setClock called %d times", len(got))
	}

	// An agent that does not own the machine (a test on a host) never
	// touches its clock.
	plain := startAgent(t)
	if plain.a.cfg.setClock != nil {
		t.Fatal("an agent without system has a setClock")
	}
	if _, err := plain.client.Ping(ctx, &api.PingRequest{HostTimeUnixNano: later.UnixNano()}); err != nil {
		t.Fatal(err)
	}
}

// New gives the system's setClock to an agent that owns the machine only.
func TestNewSetClock(t *testing.T) {
	for _, system := range []bool{false, true} {
		a, err := New(Options{System: system, EtcDir: t.TempDir()})
		if err != nil {
			t.Fatal(err)
		}
		if (a.a.cfg.setClock != nil) != system {
			t.Errorf("system %v: setClock set %v", system, a.a.cfg.setClock != nil)
		}
	}
}

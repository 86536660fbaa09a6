// Package testpause is a test-only hook: see Pause.
package testpause

import (
	"context"
	"log/slog"
	"os"
	"strings"
	"time"
)

// TEST-ONLY HOOK. Pause holds a CRI verb at one marked point while
// the environment variable MACVZ_TEST_PAUSE names that point, so that
// integration/reliability_test.go can kill the daemon, a shim or QEMU
// while the verb is half done. The value is a comma-separated list of
// point[=duration] (default 3s), e.g. MACVZ_TEST_PAUSE=start=2s,rmp.
// Points: runp (after the CNI ADD), create (after the container record),
// start (after the VM boot, before the process starts), stop (after the
// stop signal, before the wait), rm (after the kill, before the guest
// forgets the process), rmp (after the stop, before the removal).
// Unset (as in production) it does nothing: the map is empty.
var testPauses = parseTestPauses(os.Getenv("MACVZ_TEST_PAUSE"))

func parseTestPauses(v string) map[string]time.Duration {
	if v == "" {
		return nil
	}
	m := map[string]time.Duration{}
	for _, p := range strings.Split(v, ",") {
		name, dur, _ := strings.Cut(strings.TrimSpace(p), "=")
		d, err := time.ParseDuration(dur)
		if err != nil || d <= 0 {
			d = 3 * time.Second
		}
		if name != "" {
			m[name] = d
		}
	}
	return m
}

// testPause sleeps at point when MACVZ_TEST_PAUSE names it (see above).
func Pause(ctx context.Context, point string) {
	d, ok := testPauses[point]
	if !ok {
		return
	}
	slog.Warn("TEST PAUSE (MACVZ_TEST_PAUSE is set; never in production)", "point", point, "for", d)
	select {
	case <-ctx.Done():
	case <-time.After(d):
	}
}

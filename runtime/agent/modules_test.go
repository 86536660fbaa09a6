package agent

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/macvz/macvz/internal/logbuf"
)

const testLib = "/lib/modules/6.1.0-57-amd64/kernel/"

// fakeLoads replaces loadModuleFile for a test: it records the names it
// loads, fails those with "missing" in their path, and blocks a load of
// blockAt until release closes.
type fakeLoads struct {
	mu      sync.Mutex
	got     []string
	blockAt string
	release chan struct{}
}

func newFakeLoads(t *testing.T, blockAt string) *fakeLoads {
	f := &fakeLoads{blockAt: blockAt, release: make(chan struct{})}
	loadModuleFile = func(path string) error {
		if moduleName(path) == f.blockAt {
			<-f.release
		}
		f.mu.Lock()
		f.got = append(f.got, moduleName(path))
		f.mu.Unlock()
		if strings.Contains(path, "missing") {
			return errors.New("no such module")
		}
		return nil
	}
	t.Cleanup(func() { loadModuleFile = loadModule })
	return f
}

func (f *fakeLoads) loaded() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.got)
}

func writeList(t *testing.T, mods ...string) string {
	t.Helper()
	list := filepath.Join(t.TempDir(), "modules")
	var lines []string
	for _, m := range mods {
		lines = append(lines, testLib+m)
	}
	if err := os.WriteFile(list, []byte("# test\n"+strings.Join(lines, "\n")+"\n\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	return list
}

// testDeps are modules.dep's dependencies of a few modules.
var testDeps = map[string][]string{
	"virtiofs": {"fuse"}, "bridge": {"stp", "llc"}, "stp": {"llc"},
	"br_netfilter": {"bridge", "stp", "llc"}, "9p": {"9pnet", "fscache", "netfs"},
}

// loadList starts loading list (a fake load, blocking at blockAt) with
// the late modules delay after the rest.
func loadList(t *testing.T, list []string, blockAt string, delay time.Duration) (*fakeLoads, *moduleSet) {
	t.Helper()
	log := slog.New(slog.DiscardHandler)
	f := newFakeLoads(t, blockAt)
	m := newModuleSet(readModuleList(log, writeList(t, list...)), testDeps, delay)
	go m.load(log)
	return f, m
}

func closedWithin(ch <-chan struct{}, d time.Duration) bool {
	select {
	case <-ch:
		return true
	default:
	}
	select {
	case <-ch:
		return true
	case <-time.After(d):
		return false
	}
}

// TestModulesChannel: a vz guest's vsock modules release New (the
// channel) as soon as they are in, while the rest of the list still
// loads; a list without them (a QEMU guest's) releases it at once.
func TestModulesChannel(t *testing.T) {
	log := slog.New(slog.DiscardHandler)
	for name, tc := range map[string]struct {
		list    []string
		blockAt string
	}{
		"vz guest": {[]string{
			"drivers/virtio/virtio_pci.ko", "net/vmw_vsock/vsock.ko",
			"net/vmw_vsock/vmw_vsock_virtio_transport_common.ko", "net/vmw_vsock/vmw_vsock_virtio_transport.ko",
			"fs/overlayfs/overlay.ko",
		}, "overlay"},
		"qemu guest":                       {[]string{"drivers/virtio/virtio_pci.ko", "net/9p/9pnet_virtio.ko", "fs/overlayfs/overlay.ko"}, "virtio_pci"},
		"failed vsock load counts as done": {[]string{"net/vmw_vsock/vsock-missing.ko", "fs/overlayfs/overlay.ko"}, "overlay"},
	} {
		t.Run(name, func(t *testing.T) {
			f := newFakeLoads(t, tc.blockAt)
			m := newModuleSet(readModuleList(log, writeList(t, tc.list...)), nil, time.Millisecond)
			done := make(chan struct{})
			go func() { defer close(done); m.load(log) }()
			if !closedWithin(m.channel, 5*time.Second) {
				t.Error("the channel modules never counted as loaded")
			}
			close(f.release)
			// overlay loads on demand only.
			if err := m.needAll(context.Background()); err != nil {
				t.Fatal(err)
			}
			<-done
			if !closedWithin(m.all, 0) || !closedWithin(m.early, 0) {
				t.Error("early or all still open after the whole list")
			}
			if got := f.loaded(); len(got) != len(tc.list) {
				t.Errorf("loaded %v, want all of %v", got, tc.list)
			}
			if m.allUptime.Load() == 0 {
				t.Error("no uptime recorded for the whole list")
			}
		})
	}
}

// TestModulesLate: the late modules (and a module depending on one) load
// after the rest, only once something needs them: a module needed loads
// with what it depends on, and nothing else; the host asking for all
// loads the rest in the list's order. The power button's (timed) load
// once the delay has passed. The rest release StartProcess (early)
// before.
func TestModulesLate(t *testing.T) {
	list := []string{
		"drivers/virtio/virtio_pci.ko", "drivers/char/virtio_console.ko",
		"drivers/acpi/button.ko", "drivers/input/evdev.ko",
		"drivers/net/virtio_net.ko", "fs/fuse/fuse.ko", "fs/fuse/virtiofs.ko",
		"drivers/virtio/virtio_balloon.ko", "fs/overlayfs/overlay.ko",
		"net/llc/llc.ko", "net/802/stp.ko", "net/bridge/bridge.ko", "net/bridge/br_netfilter.ko",
		"drivers/char/hw_random/virtio-rng.ko",
	}
	wantOrder := []string{"virtio_pci", "virtio_console", "virtio_net", "virtio_rng",
		"button", "evdev", "fuse", "virtiofs", "virtio_balloon", "overlay", "llc", "stp", "bridge", "br_netfilter"}
	const nEarly, nTimed = 4, 6
	ctx := context.Background()
	for name, tc := range map[string]struct {
		need []string // nil: needAll
		want []string // loaded after the need, beyond the early ones
	}{
		"a late module needed":                    {[]string{"virtiofs"}, []string{"fuse", "virtiofs"}},
		"a module depending on a late one needed": {[]string{"br_netfilter"}, []string{"llc", "stp", "bridge", "br_netfilter"}},
		"two needed, one after the other":         {[]string{"overlay", "stp"}, []string{"overlay", "llc", "stp"}},
		"every module asked for":                  {nil, wantOrder[nEarly:]},
	} {
		t.Run(name, func(t *testing.T) {
			f, m := loadList(t, list, "", time.Hour)
			if !closedWithin(m.early, 5*time.Second) {
				t.Fatal("early never closed")
			}
			// Only what the setup and processes need, and no late one
			// while nothing asks (lateDelay is an hour).
			if err := m.need(ctx, "virtio_net", "9p", "not-listed"); err != nil {
				t.Fatal(err)
			}
			time.Sleep(50 * time.Millisecond)
			if got := f.loaded(); !slices.Equal(got, wantOrder[:nEarly]) {
				t.Fatalf("before anything asked for a late module: loaded %v, want %v", got, wantOrder[:nEarly])
			}
			if closedWithin(m.all, 0) || m.allUptime.Load() != 0 {
				t.Fatal("all closed before the late modules loaded")
			}
			if tc.need == nil {
				if err := m.needAll(ctx); err != nil {
					t.Fatal(err)
				}
			} else if err := m.need(ctx, tc.need...); err != nil {
				t.Fatal(err)
			}
			time.Sleep(20 * time.Millisecond)
			if got, want := f.loaded(), append(slices.Clone(wantOrder[:nEarly]), tc.want...); !slices.Equal(got, want) {
				t.Errorf("loaded %v, want %v", got, want)
			}
			// Then the host asks for all: the rest, in the list's order.
			if err := m.needAll(ctx); err != nil {
				t.Fatal(err)
			}
			if !closedWithin(m.all, 5*time.Second) {
				t.Fatal("all never closed")
			}
			got := f.loaded()
			if len(got) != len(wantOrder) || !slices.Equal(got[:nEarly+len(tc.want)], append(slices.Clone(wantOrder[:nEarly]), tc.want...)) {
				t.Errorf("loaded %v, want each of %v once, the needed first", got, wantOrder)
			}
			rest := slices.DeleteFunc(slices.Clone(wantOrder), func(n string) bool { return slices.Index(got, n) < nEarly+len(tc.want) })
			if !slices.Equal(got[nEarly+len(tc.want):], rest) {
				t.Errorf("after needAll: loaded %v, want the rest in order %v", got[nEarly+len(tc.want):], rest)
			}
		})
	}
	t.Run("a late module needed while the early ones load goes first", func(t *testing.T) {
		f, m := loadList(t, list, "virtio_console", time.Hour)
		// virtio_console's load is under way (blocked) when the need
		// comes: the need waits for it, then goes before virtio_net.
		for deadline := time.Now().Add(5 * time.Second); len(f.loaded()) == 0; time.Sleep(time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatal("virtio_pci never loaded")
			}
		}
		got := make(chan error, 1)
		go func() { got <- m.need(ctx, "virtiofs") }()
		time.Sleep(20 * time.Millisecond)
		close(f.release)
		if err := <-got; err != nil {
			t.Fatal(err)
		}
		if !closedWithin(m.early, 5*time.Second) {
			t.Fatal("early never closed")
		}
		want := []string{"virtio_pci", "virtio_console", "fuse", "virtiofs", "virtio_net", "virtio_rng"}
		if got := f.loaded(); !slices.Equal(got, want) {
			t.Errorf("loaded %v, want %v", got, want)
		}
	})
	t.Run("after the delay", func(t *testing.T) {
		f, m := loadList(t, list, "", 10*time.Millisecond)
		// A passive wait (the power button's) does not start the others.
		m.whenDone("button", "evdev")
		time.Sleep(50 * time.Millisecond)
		if got := f.loaded(); !slices.Equal(got, wantOrder[:nTimed]) {
			t.Fatalf("after the delay: loaded %v, want %v", got, wantOrder[:nTimed])
		}
		if closedWithin(m.all, 0) {
			t.Fatal("all closed while the late modules wait for a need")
		}
		if err := m.need(ctx, "overlay"); err != nil {
			t.Fatal(err)
		}
		if got, want := f.loaded(), append(slices.Clone(wantOrder[:nTimed]), "overlay"); !slices.Equal(got, want) {
			t.Errorf("overlay needed: loaded %v, want %v", got, want)
		}
		if err := m.needAll(ctx); err != nil {
			t.Fatal(err)
		}
		if got := f.loaded(); len(got) != len(wantOrder) {
			t.Errorf("loaded %v, want all of %v", got, wantOrder)
		}
	})
	t.Run("a wait ends with its context", func(t *testing.T) {
		f, m := loadList(t, list, "virtio_rng", time.Hour)
		cctx, cancel := context.WithTimeout(ctx, 20*time.Millisecond)
		defer cancel()
		if err := m.needEarly(cctx); !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("needEarly while virtio_rng loads: %v, want the deadline", err)
		}
		close(f.release)
		if err := m.needAll(ctx); err != nil {
			t.Fatal(err)
		}
	})
}

// TestNoModules: without a list (or as a macOS guest) nothing waits.
func TestNoModules(t *testing.T) {
	m := noModules()
	ctx, cancel := context.WithCancel(context.Background())
	cancel() // a wait that would block fails instead
	if err := m.needAll(ctx); err != nil {
		t.Error(err)
	}
	if err := m.needEarly(ctx); err != nil {
		t.Error(err)
	}
	if err := m.need(ctx, "9p", "virtiofs"); err != nil {
		t.Error(err)
	}
	log := slog.New(slog.DiscardHandler)
	if l := readModuleList(log, filepath.Join(t.TempDir(), "none")); l != nil {
		t.Errorf("a missing list: %v", l)
	}
}

// TestModulesLogTimes: the two "modules loaded" lines name each module
// with its load time, in load order: the early ones in the first, the
// late ones in the second (a slow boot's log says which module took it).
func TestModulesLogTimes(t *testing.T) {
	var buf logbuf.Buffer
	log := slog.New(slog.NewTextHandler(&buf, nil))
	newFakeLoads(t, "")
	list := []string{"drivers/virtio/virtio_pci.ko", "drivers/char/virtio_console.ko", "fs/fuse/fuse.ko"}
	m := newModuleSet(readModuleList(log, writeList(t, list...)), testDeps, time.Hour)
	go m.load(log)
	if err := m.needAll(context.Background()); err != nil {
		t.Fatal(err)
	}
	// The last line is written after all closes.
	deadline := time.Now().Add(5 * time.Second)
	for !strings.Contains(buf.String(), `msg="modules loaded" `) && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	each := regexp.MustCompile(`msg="modules loaded but the late ones" count=2 took=\S+ each="virtio_pci=\S+ virtio_console=\S+"`)
	late := regexp.MustCompile(`msg="modules loaded" count=3 took=\S+ late="fuse=\S+"`)
	if out := buf.String(); !each.MatchString(out) || !late.MatchString(out) {
		t.Fatalf("log does not name each module's time:\n%s", out)
	}
}

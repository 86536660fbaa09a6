package agent

import (
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestLoadModulesChannel: a vz guest's vsock modules release New (the
// channel) as soon as they are in, while the rest of the list still
// loads; a list without them (a QEMU guest's) releases it at once.
func TestLoadModulesChannel(t *testing.T) {
	const lib = "/lib/modules/6.1.0-57-arm64/kernel/"
	for name, tc := range map[string]struct {
		list []string
		// blockAt is the module whose load waits until the test has seen
		// the channel closed (or given up).
		blockAt string
	}{
		"vz guest": {[]string{
			"drivers/virtio/virtio_pci.ko", "net/vmw_vsock/vsock.ko",
			"net/vmw_vsock/vmw_vsock_virtio_transport_common.ko", "net/vmw_vsock/vmw_vsock_virtio_transport.ko",
			"fs/fuse/virtiofs.ko", "fs/overlayfs/overlay.ko",
		}, "overlay"},
		"qemu guest":                       {[]string{"drivers/virtio/virtio_pci.ko", "net/9p/9pnet_virtio.ko", "fs/overlayfs/overlay.ko"}, "virtio_pci"},
		"failed vsock load counts as done": {[]string{"net/vmw_vsock/vsock-missing.ko", "fs/overlayfs/overlay.ko"}, "overlay"},
	} {
		t.Run(name, func(t *testing.T) {
			list := filepath.Join(t.TempDir(), "modules")
			var lines []string
			for _, m := range tc.list {
				lines = append(lines, lib+m)
			}
			if err := os.WriteFile(list, []byte("# test\n"+strings.Join(lines, "\n")+"\n"), 0o644); err != nil {
				t.Fatal(err)
			}
			release := make(chan struct{})
			var got []string
			loadModuleFile = func(path string) error {
				if moduleName(path) == tc.blockAt {
					<-release
				}
				got = append(got, moduleName(path))
				if strings.Contains(path, "missing") {
					return errors.New("no such module")
				}
				return nil
			}
			defer func() { loadModuleFile = loadModule }()

			loaded, channel, ready := make(chan struct{}, 1), make(chan struct{}), make(chan struct{})
			done := make(chan struct{})
			go func() {
				defer close(done)
				loadModules(slog.New(slog.DiscardHandler), list, loaded, channel, ready)
			}()
			select {
			case <-channel:
			case <-time.After(5 * time.Second):
				t.Error("the channel modules never counted as loaded")
			}
			close(release)
			<-done
			select {
			case <-ready:
			default:
				t.Error("ready still open after the whole list")
			}
			if len(got) != len(tc.list) {
				t.Errorf("loaded %v, want all of %v", got, tc.list)
			}
		})
	}
}

package agent

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// initMounts mounts what a guest's init must (when the agent is PID 1):
// the pseudo file systems, /run and /tmp, and the cgroup2 hierarchy. The
// kernel already gives /dev/kmsg (devtmpfs) and a writable /proc/sys,
// which kubelet also needs.
// Already mounted file systems are fine.
func initMounts(log *slog.Logger) {
	mounts := []struct {
		src, target, fstype string
		flags               uintptr
		data                string
	}{
		{"proc", "/proc", "proc", unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC, ""},
		{"sysfs", "/sys", "sysfs", unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC, ""},
		{"devtmpfs", "/dev", "devtmpfs", unix.MS_NOSUID, "mode=0755"},
		{"devpts", "/dev/pts", "devpts", unix.MS_NOSUID | unix.MS_NOEXEC, "gid=5,mode=0620,ptmxmode=0666"},
		{"shm", "/dev/shm", "tmpfs", unix.MS_NOSUID | unix.MS_NODEV, "mode=1777"},
		{"tmpfs", "/run", "tmpfs", unix.MS_NOSUID | unix.MS_NODEV, "mode=0755"},
		{"tmpfs", "/tmp", "tmpfs", unix.MS_NOSUID | unix.MS_NODEV, "mode=1777"},
		// The unified cgroup hierarchy, where kubelet's cAdvisor and
		// container manager look (the node image). sysfs has the
		// directory when the kernel has cgroups.
		{"cgroup2", "/sys/fs/cgroup", "cgroup2", unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC | unix.MS_RELATIME, "nsdelegate"},
	}
	for _, m := range mounts {
		os.MkdirAll(m.target, 0o755)
		if err := unix.Mount(m.src, m.target, m.fstype, m.flags, m.data); err != nil && !errors.Is(err, unix.EBUSY) {
			log.Warn("mount failed", "target", m.target, "fstype", m.fstype, "err", err)
		}
	}
	// /dev/ptmx must reach the devpts instance mounted above.
	if st, err := os.Lstat("/dev/ptmx"); err != nil || st.Mode()&os.ModeCharDevice == 0 {
		os.Remove("/dev/ptmx")
		os.Symlink("pts/ptmx", "/dev/ptmx")
	}
	for _, l := range [][2]string{{"/proc/self/fd", "/dev/fd"}, {"/proc/self/fd/0", "/dev/stdin"}, {"/proc/self/fd/1", "/dev/stdout"}, {"/proc/self/fd/2", "/dev/stderr"}} {
		if _, err := os.Lstat(l[1]); err != nil {
			os.Symlink(l[0], l[1])
		}
	}
}

// processStart is when the agent started (as near as Go lets us see).
var processStart = time.Now()

// setupModules are the modules the host's boot-time calls need
// (ConfigureNetwork: the NIC; MountShare: 9p or virtiofs; a stop: the
// power button). ready closes once those of them the list has are
// loaded, so the setup does not wait for the rest of the list (file
// systems, the bridge), which keeps loading in the background.
var setupModules = []string{"virtio_net", "9pnet_virtio", "9p", "virtiofs", "button", "evdev"}

// channelModules are the agent's own channel when it is vsock (a Linux
// guest of the vz backend, whose init arguments say --listen=vsock:PORT):
// the address family, and the virtio transport the host's connections
// come through. Debian builds them as modules, and the listener binds as
// soon as New returns: New waits for those of them the list has (so a
// list without them, a QEMU guest's, waits for nothing).
var channelModules = []string{"vsock", "vmw_vsock_virtio_transport_common", "vmw_vsock_virtio_transport"}

// loadModuleFile loads one module (a variable for tests).
var loadModuleFile = loadModule

// loadModules loads the kernel modules listed in path (one .ko path a
// line, in dependency order; '#' comments) with finit_module. A missing
// list loads nothing; a module already loaded is fine. After each module
// it pokes loaded (non-blocking) so a waiter can look for new devices.
// It closes channel once channelModules are loaded, ready once
// setupModules are (each at the end at the latest; a module that fails
// to load counts as done).
func loadModules(log *slog.Logger, path string, loaded, channel, ready chan<- struct{}) {
	readyOnce := sync.OnceFunc(func() { close(ready) })
	defer readyOnce()
	channelOnce := sync.OnceFunc(func() { close(channel) })
	defer channelOnce()
	b, err := os.ReadFile(path)
	if err != nil {
		if !errors.Is(err, os.ErrNotExist) {
			log.Warn("module list", "path", path, "err", err)
		}
		return
	}
	var lines []string
	pending, pendingChannel := map[string]bool{}, map[string]bool{}
	for _, l := range strings.Split(string(b), "\n") {
		l = strings.TrimSpace(l)
		if l == "" || strings.HasPrefix(l, "#") {
			continue
		}
		lines = append(lines, l)
		if name := moduleName(l); slices.Contains(setupModules, name) {
			pending[name] = true
		} else if slices.Contains(channelModules, name) {
			pendingChannel[name] = true
		}
	}
	if len(pendingChannel) == 0 {
		channelOnce()
	}
	start := time.Now()
	n := 0
	for _, line := range lines {
		if err := loadModuleFile(line); err != nil {
			log.Warn("module not loaded", "module", line, "err", err)
		} else {
			n++
		}
		delete(pending, moduleName(line))
		if len(pending) == 0 {
			readyOnce()
		}
		if len(pendingChannel) > 0 {
			delete(pendingChannel, moduleName(line))
			if len(pendingChannel) == 0 {
				channelOnce()
			}
		}
		select {
		case loaded <- struct{}{}:
		default:
		}
	}
	log.Info("modules loaded", "count", n, "took", time.Since(start).Round(time.Millisecond))
}

// moduleName is a module's name from its .ko path.
func moduleName(path string) string {
	n := filepath.Base(path)
	n = strings.TrimSuffix(strings.TrimSuffix(n, ".xz"), ".ko")
	return strings.ReplaceAll(n, "-", "_")
}

func loadModule(path string) error {
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	err = unix.FinitModule(fd, "", 0)
	if errors.Is(err, unix.EEXIST) {
		return nil
	}
	return err
}

// findVirtioPort returns the device of the virtio-serial port named name.
func findVirtioPort(name string) (string, bool) {
	const dir = "/sys/class/virtio-ports"
	ents, err := os.ReadDir(dir)
	if err != nil {
		return "", false
	}
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join(dir, e.Name(), "name"))
		if err == nil && strings.TrimSpace(string(b)) == name {
			return "/dev/" + e.Name(), true
		}
	}
	return "", false
}

// openVirtioPort returns an opener for the virtio-serial port named name:
// it waits until the port exists (a module load pokes `loaded`), then
// opens its device read/write.
func openVirtioPort(log *slog.Logger, name string, loaded <-chan struct{}) func() (io.ReadWriteCloser, error) {
	first := true
	return func() (io.ReadWriteCloser, error) {
		deadline := time.Now().Add(2 * time.Second)
		for {
			if dev, ok := findVirtioPort(name); ok {
				f, err := os.OpenFile(dev, os.O_RDWR, 0)
				if err != nil {
					return nil, fmt.Errorf("opening %s: %w", dev, err)
				}
				if first {
					first = false
					log.Info("agent port open", "dev", dev, "since_start", time.Since(processStart).Round(time.Millisecond))
				}
				return f, nil
			}
			if time.Now().After(deadline) {
				return nil, fmt.Errorf("no virtio-serial port named %q", name)
			}
			select {
			case <-loaded:
			case <-time.After(5 * time.Millisecond):
			}
		}
	}
}

func setSubreaper() error {
	return unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
}

// watchPowerButton calls press when an ACPI power button (QEMU's
// system_powerdown) is pressed: it reads key events from the input
// devices named "Power Button" (the button and evdev modules).
func watchPowerButton(log *slog.Logger, press func()) {
	ents, _ := filepath.Glob("/sys/class/input/event*")
	n := 0
	for _, e := range ents {
		name, err := os.ReadFile(filepath.Join(e, "device", "name"))
		if err != nil || !strings.Contains(string(name), "Power Button") {
			continue
		}
		f, err := os.Open("/dev/input/" + filepath.Base(e))
		if err != nil {
			log.Warn("power button", "dev", filepath.Base(e), "err", err)
			continue
		}
		n++
		go func() {
			defer f.Close()
			// struct input_event: struct timeval, u16 type, u16 code, s32 value.
			const size = 24
			const evKey, keyPower = 1, 116
			buf := make([]byte, size)
			for {
				if _, err := io.ReadFull(f, buf); err != nil {
					return
				}
				typ := uint16(buf[16]) | uint16(buf[17])<<8
				code := uint16(buf[18]) | uint16(buf[19])<<8
				val := int32(uint32(buf[20]) | uint32(buf[21])<<8 | uint32(buf[22])<<16 | uint32(buf[23])<<24)
				if typ == evKey && code == keyPower && val == 1 {
					press()
				}
			}
		}()
	}
	if n == 0 {
		log.Warn("no ACPI power button found")
	}
}

package agent

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
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

// modulesDir is /lib/modules/<the running kernel's release>.
func modulesDir() string {
	var u unix.Utsname
	if unix.Uname(&u) != nil {
		return ""
	}
	return "/lib/modules/" + cstr(u.Release[:])
}

// kmsg writes line to the kernel log (the modprobe helper has no console).
func kmsg(line string) {
	if f, err := os.OpenFile("/dev/kmsg", os.O_WRONLY, 0); err == nil {
		f.WriteString("<6>" + line + "\n")
		f.Close()
	}
}

// onDemandModules names the agent the kernel's modprobe helper (see
// Modprobe) and creates the device nodes of dir's modules.devname whose
// module is not in yet (a guest without udev: opening one, /dev/fuse, is
// how a process asks for its module), as systemd does from kmod's list.
//
// What the helper trusts is fixed before any container runs: dir (the
// index and the .ko files) becomes a read-only bind mount of itself,
// which a container's root without CAP_SYS_ADMIN can neither write nor
// unmount, and the helper is /proc/<pid>/exe, the inode this agent runs
// from, which no rename in the guest's root can replace. Without the
// read-only index the kernel's requests stay unanswered. dir has an index
// (readModuleIndex read it).
func onDemandModules(log *slog.Logger, dir string) {
	err := unix.Mount(dir, dir, "", unix.MS_BIND|unix.MS_REC, "")
	if err == nil {
		err = unix.Mount("", dir, "", unix.MS_REMOUNT|unix.MS_BIND|unix.MS_RDONLY|unix.MS_NOSUID|unix.MS_NODEV, "")
	}
	if err == nil {
		helper := "/proc/" + strconv.Itoa(os.Getpid()) + "/exe"
		err = os.WriteFile("/proc/sys/kernel/modprobe", []byte(helper), 0)
	}
	if err != nil {
		log.Warn("the kernel's module requests stay unanswered", "dir", dir, "err", err)
		return
	}
	nodes, err := readDevNames(filepath.Join(dir, "modules.devname"))
	if err != nil {
		log.Warn("device nodes for on-demand modules", "err", err)
	}
	for _, n := range nodes {
		if moduleLoaded(n.module) {
			continue
		}
		p := filepath.Join("/dev", n.name)
		mode := uint32(unix.S_IFBLK)
		if n.char {
			mode = unix.S_IFCHR
		}
		os.MkdirAll(filepath.Dir(p), 0o755)
		// 0600, as devtmpfs makes the node when the module registers it.
		if err := unix.Mknod(p, mode|0o600, int(unix.Mkdev(n.major, n.minor))); err != nil && !errors.Is(err, unix.EEXIST) {
			log.Warn("device node for an on-demand module", "node", p, "module", n.module, "err", err)
		}
	}
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

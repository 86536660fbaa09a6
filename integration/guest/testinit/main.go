//go:build linux

// testinit stands in for the guest agent as /init of the test guest
// (integration/guest): it does what the agent must do first, and reports.
//
//  1. mounts devtmpfs on /dev, proc on /proc, sysfs on /sys;
//
//  2. loads every module listed in /etc/macvz/modules, in order, with
//     finit_module;
//
//  3. finds the virtio-serial port named "agent" and writes, to it and to
//     /dev/console:
//
//     macvz-test-init ok
//     modules loaded=N failed=M ms=T [errors...]
//     uptime <seconds since the kernel started, when the modules were loaded>
//     filesystems <the ones of interest found in /proc/filesystems>
//     (the lines the flags below add)
//     macvz-test-init done
//
//  4. powers the machine off.
//
// The kernel command line parameter testinit=FLAG[,FLAG] (the kernel hands
// it to /init as an environment variable) adds checks:
//
//	busybox   bring up lo, start busybox httpd on 127.0.0.1:80 serving
//	          /www and fetch / with busybox wget, reporting the body
//	modtimes  log each module's load time to the console
//	getrandom time a blocking getrandom(2) (until the kernel's CRNG is
//	          ready), reported as "getrandom ms=N"
//
// Build: CGO_ENABLED=0 GOOS=linux GOARCH=amd64 go build ./integration/guest/testinit
package main

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

var console *os.File = os.Stderr

func main() {
	for _, m := range []struct{ src, dir, typ string }{
		{"devtmpfs", "/dev", "devtmpfs"},
		{"proc", "/proc", "proc"},
		{"sysfs", "/sys", "sysfs"},
	} {
		os.MkdirAll(m.dir, 0o755)
		if err := unix.Mount(m.src, m.dir, m.typ, 0, ""); err != nil && err != unix.EBUSY {
			fmt.Fprintf(console, "macvz-test-init: mount %s: %v\n", m.dir, err)
		}
	}
	if f, err := os.OpenFile("/dev/console", os.O_WRONLY, 0); err == nil {
		console = f
	}

	flags := map[string]bool{}
	for _, f := range strings.Split(os.Getenv("testinit"), ",") {
		flags[f] = true
	}
	start := time.Now()
	loaded, failed, errs := loadModules("/etc/macvz/modules", flags["modtimes"])
	modules := fmt.Sprintf("modules loaded=%d failed=%d ms=%d%s", loaded, failed,
		time.Since(start).Milliseconds(), strings.Join(append([]string{""}, errs...), " "))
	uptime := ""
	if b, err := os.ReadFile("/proc/uptime"); err == nil {
		uptime = "uptime " + strings.Fields(string(b))[0]
	}

	port := findPort("agent", 30*time.Second)
	var out *os.File
	if port != "" {
		out, _ = os.OpenFile(port, os.O_RDWR, 0)
	}
	say := func(line string) {
		fmt.Fprintf(console, "%s\n", line)
		if out != nil {
			if _, err := out.Write([]byte(line + "\n")); err != nil {
				fmt.Fprintf(console, "macvz-test-init: write %s: %v\n", port, err)
			}
		}
	}
	if out == nil {
		fmt.Fprintf(console, "macvz-test-init: no virtio-serial port named agent\n")
	}
	say("macvz-test-init ok")
	say(modules)
	say(uptime)
	say("filesystems " + filesystems("9p", "virtiofs", "fuse", "ext4", "overlay", "tmpfs"))
	if flags["busybox"] {
		say("busybox " + busybox())
	}
	if flags["getrandom"] {
		t := time.Now()
		_, err := unix.Getrandom(make([]byte, 16), 0)
		say(fmt.Sprintf("getrandom ms=%d err=%v", time.Since(t).Milliseconds(), err))
	}
	say("macvz-test-init done")
	unix.Sync()
	unix.Reboot(unix.LINUX_REBOOT_CMD_POWER_OFF)
	select {}
}

// loadModules loads the modules listed in file, in order.
// With times, it logs each module's load time to the console.
func loadModules(file string, times bool) (loaded, failed int, errs []string) {
	b, err := os.ReadFile(file)
	if err != nil {
		return 0, 1, []string{err.Error()}
	}
	for _, p := range strings.Fields(string(b)) {
		t := time.Now()
		f, err := os.Open(p)
		if err == nil {
			err = unix.FinitModule(int(f.Fd()), "", 0)
			f.Close()
		}
		if times {
			fmt.Fprintf(console, "module %s %dus\n", filepath.Base(p), time.Since(t).Microseconds())
		}
		if err != nil && err != unix.EEXIST {
			failed++
			errs = append(errs, fmt.Sprintf("%s:%v", filepath.Base(p), err))
			continue
		}
		loaded++
	}
	return loaded, failed, errs
}

// filesystems returns those of names that /proc/filesystems lists.
func filesystems(names ...string) string {
	b, _ := os.ReadFile("/proc/filesystems")
	have := map[string]bool{}
	for _, l := range strings.Split(string(b), "\n") {
		f := strings.Fields(l)
		if len(f) > 0 {
			have[f[len(f)-1]] = true
		}
	}
	var out []string
	for _, n := range names {
		if have[n] {
			out = append(out, n)
		}
	}
	return strings.Join(out, " ")
}

func busybox() string {
	cmd := exec.Command("/bin/sh", "-c",
		"ip link set lo up && httpd -p 127.0.0.1:80 -h /www && wget -q -O - http://127.0.0.1/ && cat /etc/hostname")
	cmd.Env = []string{"PATH=/bin"}
	out, err := cmd.CombinedOutput()
	s := strings.Join(strings.Fields(string(out)), " ")
	if err != nil {
		s += fmt.Sprintf(" (error %v)", err)
	}
	return s
}

// findPort waits for the virtio-serial port with the given name.
func findPort(name string, timeout time.Duration) string {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		paths, _ := filepath.Glob("/sys/class/virtio-ports/*/name")
		for _, p := range paths {
			b, _ := os.ReadFile(p)
			if string(bytes.TrimSpace(b)) == name {
				dev := "/dev/" + filepath.Base(filepath.Dir(p))
				if _, err := os.Stat(dev); err == nil {
					return dev
				}
			}
		}
		time.Sleep(2 * time.Millisecond)
	}
	return ""
}

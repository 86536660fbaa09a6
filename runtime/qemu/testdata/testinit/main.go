//go:build linux

// testinit is the /init of the QEMU driver's test guest (an initramfs made
// by integration/guest). It loads the kernel modules the initramfs lists, finds the virtio-serial port named "agent" and
// says "hello" to every host connection, then answers one-line commands:
//
//	ping              -> pong
//	cat PATH          -> the file's first line
//	mount9p TAG DIR   -> ok (mounts the 9p share TAG at DIR)
//	poweroff | reboot -> ok, then does it
//
// It also powers off on the ACPI power button (QMP system_powerdown).
// Build: CGO_ENABLED=0 go build ./runtime/qemu/testdata/testinit
package main

import (
	"bufio"
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

var console *os.File = os.Stderr

func logf(format string, args ...any) {
	fmt.Fprintf(console, "testinit: "+format+"\n", args...)
}

func main() {
	for _, m := range []struct{ src, dir, typ string }{
		{"devtmpfs", "/dev", "devtmpfs"},
		{"proc", "/proc", "proc"},
		{"sysfs", "/sys", "sysfs"},
	} {
		os.MkdirAll(m.dir, 0o755)
		if err := unix.Mount(m.src, m.dir, m.typ, 0, ""); err != nil && err != unix.EBUSY {
			logf("mount %s: %v", m.dir, err)
		}
	}
	if f, err := os.OpenFile("/dev/console", os.O_WRONLY, 0); err == nil {
		console = f
	}
	loadModules()
	go powerButton()

	port := findPort("agent")
	logf("agent port %s", port)
	f, err := os.OpenFile(port, os.O_RDWR, 0)
	if err != nil {
		logf("open %s: %v", port, err)
		halt(unix.LINUX_REBOOT_CMD_POWER_OFF)
	}
	for {
		// A write blocks until a host client is connected; a read returns
		// EOF once it has gone. So: hello to each new connection.
		if _, err := f.Write([]byte("hello\n")); err != nil {
			logf("write: %v", err)
			time.Sleep(10 * time.Millisecond)
			continue
		}
		serve(f)
	}
}

func serve(f *os.File) {
	r := bufio.NewReader(f)
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			return // host disconnected
		}
		args := strings.Fields(line)
		if len(args) == 0 {
			continue
		}
		reply := func(format string, a ...any) { fmt.Fprintf(f, format+"\n", a...) }
		switch args[0] {
		case "ping":
			reply("pong")
		case "cat":
			b, err := os.ReadFile(args[1])
			if err != nil {
				reply("error %v", err)
				continue
			}
			reply("%s", strings.SplitN(string(b), "\n", 2)[0])
		case "mount9p":
			os.MkdirAll(args[2], 0o755)
			if err := unix.Mount(args[1], args[2], "9p", 0, "trans=virtio,version=9p2000.L"); err != nil {
				reply("error %v", err)
				continue
			}
			reply("ok")
		case "poweroff":
			reply("ok")
			halt(unix.LINUX_REBOOT_CMD_POWER_OFF)
		case "reboot":
			reply("ok")
			halt(unix.LINUX_REBOOT_CMD_RESTART)
		default:
			reply("error unknown command %q", args[0])
		}
	}
}

func halt(cmd int) {
	unix.Sync()
	if err := unix.Reboot(cmd); err != nil {
		logf("reboot(%#x): %v", cmd, err)
	}
	select {}
}

// findPort waits for the virtio-serial port with the given name.
func findPort(name string) string {
	for {
		paths, _ := filepath.Glob("/sys/class/virtio-ports/*/name")
		for _, p := range paths {
			b, _ := os.ReadFile(p)
			if strings.TrimSpace(string(b)) == name {
				dev := "/dev/" + filepath.Base(filepath.Dir(p))
				if _, err := os.Stat(dev); err == nil {
					return dev
				}
			}
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// modulesList is integration/guest's contract: the modules to load, one
// absolute path per line, in load order.
const modulesList = "/etc/macvz/modules"

// loadModules loads every module in modulesList, in order.
func loadModules() {
	b, err := os.ReadFile(modulesList)
	if err != nil {
		logf("%s: %v", modulesList, err)
		return
	}
	for _, path := range strings.Fields(string(b)) {
		f, err := os.Open(path)
		if err != nil {
			logf("module %s: %v", path, err)
			continue
		}
		if err := unix.FinitModule(int(f.Fd()), "", 0); err != nil && err != unix.EEXIST {
			logf("module %s: %v", path, err)
		}
		f.Close()
	}
}

// powerButton powers off on KEY_POWER from the ACPI power button's input
// device (what system_powerdown presses).
func powerButton() {
	for i := 0; i < 200; i++ {
		devs, _ := filepath.Glob("/sys/class/input/event*/device/name")
		for _, p := range devs {
			b, _ := os.ReadFile(p)
			if !strings.Contains(string(b), "Power Button") {
				continue
			}
			ev := "/dev/input/" + filepath.Base(filepath.Dir(filepath.Dir(p)))
			f, err := os.Open(ev)
			if err != nil {
				continue
			}
			logf("power button %s", ev)
			buf := make([]byte, 24) // struct input_event on 64-bit
			for {
				if _, err := f.Read(buf); err != nil {
					logf("power button: %v", err)
					return
				}
				typ := binary.LittleEndian.Uint16(buf[16:])
				code := binary.LittleEndian.Uint16(buf[18:])
				val := int32(binary.LittleEndian.Uint32(buf[20:]))
				if typ == 1 && code == 116 && val == 1 { // EV_KEY, KEY_POWER, press
					logf("power button pressed")
					halt(unix.LINUX_REBOOT_CMD_POWER_OFF)
				}
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	logf("no power button input device")
}

package guest

import (
	"compress/gzip"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"sort"
	"strings"
)

// ModulesList is the file, in the initramfs, naming the kernel modules
// /init must load: one absolute path per line, in load order (every
// module after the modules it depends on).
const ModulesList = "/etc/macvz/modules"

// AgentPort is the name of the virtio-serial port the guest agent talks
// on (/sys/class/virtio-ports/vportNpM/name).
const AgentPort = "agent"

// DefaultModules are the modules the guest loads, by name, in the order
// wanted (their dependencies are added before them): the agent's channel
// first, the virtio RNG (with a virtio-rng device the kernel's CRNG is
// ready as soon as it loads; without one getrandom(2) blocks for about a
// second after boot under TCG), then disks, network, host shares (9p for
// QEMU, virtiofs for vz), file systems, and the ACPI power button (QMP
// system_powerdown).
//
// crc32c_generic stands for ext4's and jbd2's soft dependency on the
// crc32c crypto driver, which the kernel would otherwise request through
// modprobe (crc32c-intel needs SSE4.2, which TCG's default CPU lacks).
var DefaultModules = []string{
	"virtio_pci", "virtio_console",
	// What the host's setup calls need comes first: the agent answers
	// them as soon as these are in, while the rest loads.
	"virtio_net",
	// The agent loads the shares' file systems only when a container
	// first binds a volume (runtime/agent: lateModules).
	"9pnet_virtio", "9p",
	"virtiofs",
	"button", "evdev", // the power button: a graceful stop
	"virtio_rng",
	"virtio_balloon", // a running pod's memory shrinks through it (resize)
	"virtio_blk",
	// No ext4: the test guest has no disk (a guest with an ext4 disk
	// adds crc32c_generic and ext4 with build-guest --modules).
	"overlay",
	"bridge", // brctl in privileged containers (critest)
}

// DefaultModulesFor is DefaultModules for a guest of arch. An arm64
// guest boots from a device tree on QEMU's virt machine (no firmware, no
// ACPI): its power button is a GPIO line of the PL061 (built in), which
// gpio_keys turns into the power key. Its ACPI button driver is built in
// (ResolveModules skips it). An arm64 guest is also what a Mac boots,
// whose agent channel is vsock (the vz backend's --listen=vsock:1024; the
// agent, as init, waits for these modules before it listens).
func DefaultModulesFor(arch string) []string {
	if arch != ArchARM64 {
		return DefaultModules
	}
	var mods []string
	for _, m := range DefaultModules {
		mods = append(mods, m)
		switch m {
		case "virtio_console":
			mods = append(mods, VsockModules...)
		case "button":
			mods = append(mods, "gpio_keys")
		}
	}
	return mods
}

// VsockModules are the arm64 guest's vsock transport for vz (the list
// runtime/agent waits for as init, channelModules).
var VsockModules = []string{"vsock", "vmw_vsock_virtio_transport_common", "vmw_vsock_virtio_transport"}

// File is one extra file of an initramfs.
type File struct {
	Path string      // absolute path in the guest
	Mode fs.FileMode // type and permission bits; 0 means a regular file, 0644
	Data []byte      // the content, or a symbolic link's target
	// HardLink, when set, makes this regular file another name of the
	// file at that path (one inode; Data is ignored).
	HardLink string
}

// InitramfsOptions describe an initramfs.
type InitramfsOptions struct {
	// Init is the host path of the static linux/amd64 program that
	// becomes /init (the guest agent). Required.
	Init string
	// Kernel supplies the modules; nil for none.
	Kernel *Kernel
	// Modules are module names (as modprobe takes them) to include and
	// list in ModulesList; nil means DefaultModules.
	Modules []string
	// Busybox is the host path of a static busybox, installed as
	// /bin/busybox with a symbolic link in /bin for each applet; "" for
	// none.
	Busybox string
	// BusyboxList is a busybox this host runs whose `--list` names the
	// applets of Busybox (the same Debian version for the host's
	// architecture), for a Busybox of another architecture; "" means
	// Busybox itself.
	BusyboxList string
	// Applets, when set, is the host path of a busybox whose applets
	// become /bin/<applet> as hard links of one copy of it (/bin/sh),
	// instead of symbolic links to Busybox; Busybox's other applets keep
	// their links. A hard link is a name of its own: binding /dev/null
	// over /bin/ls (a masked path) leaves /bin/sh alone, where a symbolic
	// link would mask /bin/busybox and so the shell. Its dynamic loader
	// and libraries come in Files. AppletsList is to Applets what
	// BusyboxList is to Busybox.
	Applets, AppletsList string
	// Files are added last and replace what is already at their path.
	Files []File
	// Gzip compresses the archive (the kernel unpacks either).
	Gzip bool
	// KeepModuleSignatures keeps the modules' appended signatures. By
	// default they are stripped: checking them is a large part of the
	// module loading time under TCG (see StripModuleSignature).
	KeepModuleSignatures bool
}

// InitramfsInfo describes a written initramfs.
type InitramfsInfo struct {
	Modules []string // guest paths, in load order, as in ModulesList
	Entries int      // cpio entries
	Size    int64    // bytes written (after compression)
}

// Applets left out of /bin: without init and linuxrc a failing /init ends
// the boot (kernel panic) instead of starting busybox's init; modprobe,
// because the agent is the kernel's modprobe helper (it names itself so),
// answering from the restricted index this archive has.
var skipApplets = map[string]bool{"init": true, "linuxrc": true, "modprobe": true}

// baseFiles is the skeleton every guest gets.
func baseFiles() []File {
	dir := func(p string, perm fs.FileMode) File { return File{Path: p, Mode: fs.ModeDir | perm} }
	link := func(p, target string) File { return File{Path: p, Mode: fs.ModeSymlink | 0o777, Data: []byte(target)} }
	return []File{
		dir("/bin", 0o755), dir("/dev", 0o755), dir("/etc", 0o755),
		dir("/proc", 0o555), dir("/sys", 0o555), dir("/run", 0o755),
		dir("/tmp", fs.ModeSticky|0o777), dir("/root", 0o700), dir("/mnt", 0o755),
		link("/sbin", "bin"), link("/usr/bin", "../bin"), link("/usr/sbin", "../bin"),
		// The kernel opens /dev/console for /init's stdin, stdout and
		// stderr before anything is mounted.
		{Path: "/dev/console", Mode: fs.ModeDevice | fs.ModeCharDevice | 0o600},
		// Where no console driver is built in (vz's virtio console is a
		// module) /dev/console cannot open: the kernel starts /init with
		// no stdin, stdout or stderr, and Go's runtime then opens
		// /dev/null for them, or aborts.
		{Path: "/dev/null", Mode: fs.ModeDevice | fs.ModeCharDevice | 0o666},
		{Path: "/etc/passwd", Data: []byte("root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n")},
		{Path: "/etc/group", Data: []byte("root:x:0:\nnobody:x:65534:\nnogroup:x:65534:\n")},
		{Path: "/etc/hostname", Data: []byte("macvz\n")},
		{Path: "/etc/hosts", Data: []byte("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n")},
		{Path: "/etc/resolv.conf", Data: []byte{}},
	}
}

// WriteInitramfs writes a newc cpio archive: the skeleton (/bin, /dev with
// /dev/console, /etc/passwd, group, hostname, hosts, an empty resolv.conf,
// /proc, /sys, /run, /tmp, /root, /mnt), /init, busybox, the modules with
// the kernel's modules.dep, modules.alias and modules.devname restricted to
// them and ModulesList, and o.Files.
func WriteInitramfs(w io.Writer, o InitramfsOptions) (*InitramfsInfo, error) {
	if o.Init == "" {
		return nil, fmt.Errorf("initramfs: no /init program")
	}
	t := tree{}
	for _, f := range baseFiles() {
		t.add(f)
	}
	init, err := os.ReadFile(o.Init)
	if err != nil {
		return nil, fmt.Errorf("initramfs /init: %w", err)
	}
	t.add(File{Path: "/init", Mode: 0o755, Data: init})

	if o.Busybox != "" {
		bb, err := os.ReadFile(o.Busybox)
		if err != nil {
			return nil, fmt.Errorf("initramfs busybox: %w", err)
		}
		t.add(File{Path: "/bin/busybox", Mode: 0o755, Data: bb})
		list := o.Busybox
		if o.BusyboxList != "" {
			list = o.BusyboxList
		}
		out, err := exec.Command(list, "--list").Output()
		if err != nil {
			return nil, fmt.Errorf("%s --list: %w%s", list, err, stderrOf(err))
		}
		for _, a := range strings.Fields(string(out)) {
			if !skipApplets[a] && a != "busybox" && !strings.Contains(a, "/") {
				t.add(File{Path: "/bin/" + a, Mode: fs.ModeSymlink | 0o777, Data: []byte("busybox")})
			}
		}
	}
	if o.Applets != "" {
		bb, err := os.ReadFile(o.Applets)
		if err != nil {
			return nil, fmt.Errorf("initramfs applets: %w", err)
		}
		list := o.Applets
		if o.AppletsList != "" {
			list = o.AppletsList
		}
		out, err := exec.Command(list, "--list").Output()
		if err != nil {
			return nil, fmt.Errorf("%s --list: %w%s", list, err, stderrOf(err))
		}
		t.add(File{Path: "/bin/sh", Mode: 0o755, Data: bb})
		for _, a := range strings.Fields(string(out)) {
			if !skipApplets[a] && a != "busybox" && a != "sh" && !strings.Contains(a, "/") {
				t.add(File{Path: "/bin/" + a, Mode: 0o755, HardLink: "/bin/sh"})
			}
		}
	}

	info := &InitramfsInfo{}
	if o.Kernel != nil {
		names := o.Modules
		if names == nil {
			names = DefaultModules
		}
		mods, err := ResolveModules(o.Kernel.ModulesDir, names)
		if err != nil {
			return nil, err
		}
		guestDir := "/lib/modules/" + o.Kernel.Version
		var dep strings.Builder
		for _, m := range mods {
			data, err := os.ReadFile(filepath.Join(o.Kernel.ModulesDir, m.Path))
			if err != nil {
				return nil, err
			}
			if !o.KeepModuleSignatures {
				data = StripModuleSignature(data)
			}
			t.add(File{Path: guestDir + "/" + m.Path, Mode: 0o644, Data: data})
			info.Modules = append(info.Modules, guestDir+"/"+m.Path)
			dep.WriteString(m.Path + ":")
			for _, d := range m.Deps {
				dep.WriteString(" " + d)
			}
			dep.WriteString("\n")
		}
		t.add(File{Path: guestDir + "/modules.dep", Data: []byte(dep.String())})
		// The kernel's aliases and device nodes of the included modules:
		// the agent as modprobe helper answers the kernel's requests
		// ("fs-overlay", "rtnl-link-bridge", char-major-10-229) with them.
		included := map[string]bool{}
		for _, m := range mods {
			included[m.Name] = true
		}
		for _, idx := range []struct {
			file  string
			field int // which field names the module
		}{{"modules.alias", 2}, {"modules.devname", 0}} {
			data, err := restrictIndex(filepath.Join(o.Kernel.ModulesDir, idx.file), idx.field, included)
			if err != nil {
				return nil, err
			}
			if data != nil {
				t.add(File{Path: guestDir + "/" + idx.file, Data: data})
			}
		}
		list := strings.Join(info.Modules, "\n")
		if list != "" {
			list += "\n"
		}
		t.add(File{Path: ModulesList, Data: []byte(list)})
	}
	for _, f := range o.Files {
		t.add(f)
	}

	cw := &countWriter{w: w}
	var out io.Writer = cw
	var zw *gzip.Writer
	if o.Gzip {
		zw = gzip.NewWriter(cw)
		out = zw
	}
	info.Entries, err = t.write(out)
	if err != nil {
		return nil, err
	}
	if zw != nil {
		if err := zw.Close(); err != nil {
			return nil, err
		}
	}
	info.Size = cw.n
	return info, nil
}

// restrictIndex is the lines of a depmod index file (modules.alias,
// modules.devname) whose module, the given field, is included; nil when
// the kernel has no such file.
func restrictIndex(file string, field int, included map[string]bool) ([]byte, error) {
	data, err := os.ReadFile(file)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	out := []byte{} // an index of no line is an empty file, not none
	for _, l := range strings.Split(string(data), "\n") {
		if f := strings.Fields(l); len(f) > field && !strings.HasPrefix(l, "#") && included[ModuleName(f[field])] {
			out = append(append(out, l...), '\n')
		}
	}
	return out, nil
}

// devices are the device numbers of the skeleton's device nodes.
var devices = map[string][2]uint32{"/dev/console": {5, 1}, "/dev/null": {1, 3}}

// tree is the initramfs being assembled, by guest path.
type tree map[string]File

// add puts f at its path, with any missing parent directories.
func (t tree) add(f File) {
	p := path.Clean("/" + f.Path)
	if f.Mode == 0 {
		f.Mode = 0o644
	}
	f.Path = p
	t[p] = f
	for d := path.Dir(p); d != "/"; d = path.Dir(d) {
		if _, ok := t[d]; ok {
			break
		}
		t[d] = File{Path: d, Mode: fs.ModeDir | 0o755}
	}
}

// write writes the entries, parents before children, and the trailer.
func (t tree) write(w io.Writer) (int, error) {
	names := make([]string, 0, len(t))
	for p := range t {
		names = append(names, p)
	}
	// Compare by path components so that a directory comes right before
	// its contents ("/a" < "/a/b" < "/a-b").
	sort.Slice(names, func(i, j int) bool {
		return strings.ReplaceAll(names[i], "/", "\x00") < strings.ReplaceAll(names[j], "/", "\x00")
	})
	// A hard-linked file's names share an inode and a link count; the
	// kernel links each later name to the first one it unpacked, so the
	// data goes with whichever name comes first and the others are empty.
	nlink := map[string]uint32{}
	for _, f := range t {
		if f.HardLink != "" {
			if tf, ok := t[f.HardLink]; !ok || !tf.Mode.IsRegular() || tf.HardLink != "" {
				return 0, fmt.Errorf("initramfs: %s is a hard link to %s, which is not a regular file", f.Path, f.HardLink)
			}
			nlink[f.HardLink]++
		}
	}
	inos := map[string]uint32{}
	cw := &cpioWriter{w: w, mtime: uint32(epoch.Unix())}
	for _, p := range names {
		f := t[p]
		dev := devices[p]
		major, minor := dev[0], dev[1]
		data := f.Data
		if f.Mode.IsDir() {
			data = nil
		}
		group := p
		if f.HardLink != "" {
			group = f.HardLink
			data = t[group].Data
		}
		if n, ok := nlink[group]; ok {
			if ino, seen := inos[group]; seen {
				cw.linkEntry(cpioName(p), cpioMode(f.Mode), ino, n+1)
				continue
			}
			inos[group] = cw.entryLinks(cpioName(p), cpioMode(f.Mode), data, n+1)
			continue
		}
		cw.entry(cpioName(p), cpioMode(f.Mode), data, major, minor)
	}
	return len(names) + 1, cw.close()
}

type countWriter struct {
	w io.Writer
	n int64
}

func (c *countWriter) Write(b []byte) (int, error) {
	n, err := c.w.Write(b)
	c.n += int64(n)
	return n, err
}

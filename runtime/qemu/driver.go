// Package qemu is the Linux backend of runtime/vm: it runs Linux guests in
// qemu-system-x86_64 (amd64 guests) or qemu-system-aarch64 (arm64
// guests, Spec.Arch), one QEMU child process per Machine.
//
// What a machine looks like (see Args for the exact command line):
//
//   - direct boot (the firmware only hands over) of an uncompressed kernel, with
//     -nodefaults and no display; a guest reboot ends QEMU (-no-reboot) so
//     the runtime sees it. amd64: a PVH ELF vmlinux on -M q35. arm64: an
//     arm64 Image on -M virt (GICv3 when the accelerator has it) with
//     -cpu max under TCG, -cpu host under KVM;
//   - the serial console (ttyS0 on amd64, the PL011 ttyAMA0 on arm64)
//     appended to Spec.ConsoleLog;
//   - the guest agent's channel: a virtio-serial port named "agent" whose
//     host end is the unix socket <Dir>/agent.sock (DialAgent);
//   - QMP, the control channel, on <Dir>/qmp.sock (held by the Machine);
//   - raw disks as virtio-blk, host directories as virtio-9p (there is no
//     virtiofsd on our hosts), NICs as virtio-net on a tap device or
//     user-mode networking, all on PCI (PCIe on virt). vhost is never
//     requested;
//   - amd64: qboot as the firmware when it is installed beside QEMU
//     (QbootFor), else SeaBIOS. Only amd64 guests are restored from a
//     saved state (Restorable, which Validate applies to
//     Spec.RestoreFrom); the runtime reseeds a restored guest's RNG
//     through its agent (there is no vmgenid device).
//
// Files in Spec.Dir: qemu.pid, qemu.log (QEMU's stderr and stdout),
// agent.sock, qmp.sock, and console.log when Spec.ConsoleLog is empty.
//
// Options (Spec.QEMU overrides the driver's defaults from New):
//
//   - Binary: the QEMU executable for amd64 guests, a path or a name
//     looked up in PATH (default qemu-system-x86_64); ARM64Binary, the
//     one for arm64 guests (default qemu-system-aarch64, Debian's
//     qemu-system-arm package);
//   - Accel: "tcg", "kvm" or "auto" (default). auto picks kvm when
//     /dev/kvm opens read-write and the kvm_pvm module is not loaded and
//     the guest's architecture is the host's, else tcg. Hosts whose /dev/kvm is backed by kvm_pvm (our CI machines)
//     hang a stock kernel under kvm, which is why auto avoids it there;
//     set "tcg" explicitly wherever kvm is known to be unusable.
//   - Machine (amd64 guests): "q35" (default) or "pc". Both boot the
//     same PVH kernels;
//     q35 was a little faster in every run here under TCG (cold boot to an
//     answering agent, integration/guest's initramfs, 5 boots per run:
//     q35 2.11–2.59 s, pc 2.18–2.97 s). arm64 guests run on "virt" only.
package qemu

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"

	"github.com/containerd/errdefs"

	"github.com/macvz/macvz/runtime/vm"
)

// Accelerators.
const (
	AccelAuto = "auto"
	AccelKVM  = "kvm"
	AccelTCG  = "tcg"
)

// DefaultBinary is the QEMU executable for amd64 guests when no option
// names one.
const DefaultBinary = "qemu-system-x86_64"

// DefaultARM64Binary is the QEMU executable for arm64 guests when no
// option names one.
const DefaultARM64Binary = "qemu-system-aarch64"

// DefaultMachine is the QEMU machine type of amd64 guests when no option
// names one.
const DefaultMachine = "q35"

// ARM64Machine is the QEMU machine type of arm64 guests.
const ARM64Machine = "virt"

// Guest architectures (vm.Spec.Arch, as GOARCH names them).
const (
	ArchAMD64 = "amd64"
	ArchARM64 = "arm64"
)

// arches are the guest architectures the driver runs: the QEMU binary's
// default, the Debian package that has it, and the kernel's console.
var arches = map[string]struct {
	binary, pkg, console string
}{
	ArchAMD64: {DefaultBinary, "qemu-system-x86", "ttyS0"},
	ArchARM64: {DefaultARM64Binary, "qemu-system-arm", "ttyAMA0"},
}

// guestArch is spec.Arch with its default.
func guestArch(spec *vm.Spec) string {
	if spec.Arch == "" {
		return ArchAMD64
	}
	return spec.Arch
}

// MinMemoryBytes is the smallest guest memory Validate accepts.
const MinMemoryBytes = 64 << 20

// File names inside Spec.Dir.
const (
	AgentSocket = "agent.sock"
	QMPSocket   = "qmp.sock"
	PIDFile     = "qemu.pid"
	LogFile     = "qemu.log"
	ConsoleFile = "console.log"
)

// Option configures the driver's defaults.
type Option func(*Driver)

// WithBinary sets the default QEMU executable for amd64 guests.
func WithBinary(path string) Option { return func(d *Driver) { d.binary = path } }

// WithARM64Binary sets the default QEMU executable for arm64 guests.
func WithARM64Binary(path string) Option { return func(d *Driver) { d.arm64Binary = path } }

// WithAccel sets the default accelerator: "auto", "kvm" or "tcg".
func WithAccel(accel string) Option { return func(d *Driver) { d.accel = accel } }

// WithMachineType sets the default machine type of amd64 guests: "pc"
// or "q35".
func WithMachineType(m string) Option { return func(d *Driver) { d.machine = m } }

// Driver is the QEMU vm.Driver.
type Driver struct {
	binary      string
	arm64Binary string
	accel       string
	machine     string

	kvmOnce sync.Once
	kvmOK   bool
}

var _ vm.Driver = (*Driver)(nil)

// New returns the QEMU driver. Without options it runs
// qemu-system-x86_64 (amd64 guests, on -M q35) or qemu-system-aarch64
// (arm64 guests, on -M virt) from PATH, with accel auto.
func New(opts ...Option) *Driver {
	d := &Driver{binary: DefaultBinary, arm64Binary: DefaultARM64Binary, accel: AccelAuto, machine: DefaultMachine}
	for _, o := range opts {
		o(d)
	}
	return d
}

// Name implements vm.Driver.
func (d *Driver) Name() string { return "qemu" }

// config is a spec's options resolved against the driver's defaults.
type config struct {
	arch    string // amd64 or arm64 (unchecked until Validate)
	binary  string // as given (name or path)
	accel   string // auto, kvm or tcg
	machine string
	// firmware is the -bios file ("": QEMU's default, SeaBIOS).
	firmware string
}

func (d *Driver) config(spec *vm.Spec) config {
	c := config{arch: guestArch(spec), binary: d.binary, accel: d.accel, machine: d.machine}
	if c.arch == ArchARM64 {
		c.binary, c.machine = d.arm64Binary, ARM64Machine
		if v := spec.QEMU.ARM64Binary; v != "" {
			c.binary = v
		}
	} else if v := spec.QEMU.Binary; v != "" {
		c.binary = v
	}
	if v := spec.QEMU.Accel; v != "" {
		c.accel = v
	}
	if v := spec.QEMU.Machine; v != "" {
		c.machine = v
	}
	return c
}

func invalid(format string, args ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{errdefs.ErrInvalidArgument}, args...)...)
}

func precondition(format string, args ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{errdefs.ErrFailedPrecondition}, args...)...)
}

// Restorable implements vm.Driver: an amd64 guest can be restored from
// a saved state, an arm64 guest cannot: macvz has never saved and
// restored QEMU's virt machine (its GIC and timer state under TCG), so it
// does not offer it.
func (d *Driver) Restorable(spec *vm.Spec) error {
	if spec == nil {
		return invalid("no VM spec")
	}
	if d.config(spec).arch == ArchARM64 {
		return precondition("an arm64 guest cannot be restored from a saved state: macvz saves and restores only amd64 QEMU guests")
	}
	return nil
}

// Validate implements vm.Driver: it checks the spec without creating
// anything. Bad values are errdefs.ErrInvalidArgument; missing files, a
// missing QEMU or an unusable accelerator are errdefs.ErrFailedPrecondition.
func (d *Driver) Validate(spec *vm.Spec) error {
	if spec == nil {
		return invalid("no VM spec")
	}
	c := d.config(spec)
	switch spec.Boot.Kind {
	case vm.BootLinux:
	case vm.BootMacOS:
		return invalid("boot.kind %q: the qemu backend boots Linux guests; macOS guests need the vz backend on a Mac", spec.Boot.Kind)
	default:
		return invalid("boot.kind %q: the qemu backend supports only %q", spec.Boot.Kind, vm.BootLinux)
	}
	if _, ok := arches[c.arch]; !ok {
		return invalid("arch %q: the qemu backend runs %q and %q guests", spec.Arch, ArchAMD64, ArchARM64)
	}
	if spec.ID == "" {
		return invalid("id is empty")
	}
	if spec.Dir == "" || !filepath.IsAbs(spec.Dir) {
		return invalid("dir %q must be an absolute path", spec.Dir)
	}
	if spec.CPUs < 1 {
		return invalid("cpus %d: a VM needs at least 1 CPU", spec.CPUs)
	}
	if spec.MemoryBytes < MinMemoryBytes {
		return invalid("memoryBytes %d: a VM needs at least %d MiB", spec.MemoryBytes, MinMemoryBytes>>20)
	}
	if spec.Boot.Kernel == "" {
		return invalid("boot.kernel is empty: the qemu backend boots a kernel directly")
	}
	if err := regularFile("boot.kernel", spec.Boot.Kernel); err != nil {
		return err
	}
	if spec.Boot.Initrd != "" {
		if err := regularFile("boot.initrd", spec.Boot.Initrd); err != nil {
			return err
		}
	}
	if strings.ContainsAny(spec.Boot.Cmdline, "\n\x00") {
		return invalid("boot.cmdline contains a newline or NUL")
	}
	for i, disk := range spec.Disks {
		if disk.Path == "" {
			return invalid("disks[%d].path is empty", i)
		}
		if err := regularFile(fmt.Sprintf("disks[%d].path", i), disk.Path); err != nil {
			return err
		}
	}
	tags := map[string]bool{}
	for i, s := range spec.Shares {
		if s.Tag == "" {
			return invalid("shares[%d].tag is empty", i)
		}
		if len(s.Tag) > maxTagLen || strings.ContainsAny(s.Tag, ",= \t\n\x00") {
			return invalid("shares[%d].tag %q: a 9p mount tag has at most %d bytes and no commas, '=' or spaces", i, s.Tag, maxTagLen)
		}
		if tags[s.Tag] {
			return invalid("shares[%d].tag %q is used twice", i, s.Tag)
		}
		tags[s.Tag] = true
		if len(s.Dirs) > 0 {
			return invalid("shares[%d] %q has %d directories: a share of several named directories is the vz backend's (VZMultipleDirectoryShare); the qemu backend exports one directory per share", i, s.Tag, len(s.Dirs))
		}
		if s.HostPath == "" || !filepath.IsAbs(s.HostPath) {
			return invalid("shares[%d].hostPath %q must be an absolute path", i, s.HostPath)
		}
		fi, err := os.Stat(s.HostPath)
		if err != nil {
			return precondition("shares[%d].hostPath: %v", i, err)
		}
		if !fi.IsDir() {
			return invalid("shares[%d].hostPath %q is not a directory", i, s.HostPath)
		}
	}
	for i, n := range spec.NICs {
		switch n.Kind {
		case vm.NICTap:
			if n.Device == "" {
				return invalid("nics[%d].device is empty: a tap NIC names its tap device", i)
			}
			if len(n.Device) > 15 || strings.ContainsAny(n.Device, ",=/ \t\n\x00") {
				return invalid("nics[%d].device %q is not a valid interface name", i, n.Device)
			}
		case vm.NICUser:
		default:
			return invalid("nics[%d].kind %q: the qemu backend supports %q and %q", i, n.Kind, vm.NICTap, vm.NICUser)
		}
		if len(n.Forwards) > 0 && n.Kind != vm.NICUser {
			return invalid("nics[%d]: port forwards need a %q NIC", i, vm.NICUser)
		}
		for j, f := range n.Forwards {
			if (f.Protocol != "tcp" && f.Protocol != "udp") || f.HostPort < 1 || f.HostPort > 65535 || f.GuestPort < 1 || f.GuestPort > 65535 {
				return invalid("nics[%d].forwards[%d]: %+v is not a tcp/udp forward between valid ports", i, j, f)
			}
			if f.HostIP != "" && net.ParseIP(f.HostIP) == nil {
				return invalid("nics[%d].forwards[%d].hostIP %q is not an IP address", i, j, f.HostIP)
			}
		}
		if err := validMAC(n.MAC); err != nil {
			return invalid("nics[%d].mac %q: %v", i, n.MAC, err)
		}
	}
	if spec.RestoreFrom != "" {
		if err := d.Restorable(spec); err != nil {
			return fmt.Errorf("restoreFrom: %w; boot it cold", err)
		}
		if err := regularFile("restoreFrom", spec.RestoreFrom); err != nil {
			return err
		}
	}
	if spec.RestoreRAM != "" {
		if spec.RestoreFrom == "" {
			return invalid("restoreRAM %q without restoreFrom: a RAM file goes with the state saved beside it", spec.RestoreRAM)
		}
		if err := regularFile("restoreRAM", spec.RestoreRAM); err != nil {
			return err
		}
	}
	switch c.accel {
	case AccelAuto, AccelTCG:
	case AccelKVM:
		if !nativeArch(c.arch) {
			return invalid("qemu accel %q: an %s guest cannot use kvm on this %s host; use %q or %q", c.accel, c.arch, runtime.GOARCH, AccelAuto, AccelTCG)
		}
		f, err := os.OpenFile("/dev/kvm", os.O_RDWR, 0)
		if err != nil {
			return precondition("qemu accel %q: %v", c.accel, err)
		}
		f.Close()
	default:
		return invalid("qemu accel %q: use %q, %q or %q", c.accel, AccelAuto, AccelKVM, AccelTCG)
	}
	switch {
	case c.arch == ArchARM64:
		if c.machine != ARM64Machine {
			return invalid("qemu machine %q: arm64 guests run on %q", c.machine, ARM64Machine)
		}
	case c.machine != "pc" && c.machine != "q35":
		return invalid("qemu machine %q: use \"pc\" or \"q35\"", c.machine)
	}
	if _, err := exec.LookPath(c.binary); err != nil {
		return missingBinary(c, err)
	}
	return nil
}

// missingBinary is the error for a QEMU executable that is not there,
// naming the Debian package that has it.
func missingBinary(c config, err error) error {
	return precondition("qemu binary %q for %s guests: %v (apt-get install %s)", c.binary, c.arch, err, arches[c.arch].pkg)
}

// nativeArch says whether guests of arch run on this host's CPU (so kvm
// can run them).
func nativeArch(arch string) bool { return arch == runtime.GOARCH }

// maxTagLen is the longest 9p mount tag this driver accepts. QEMU takes
// longer tags, but the guest's 9p client copies the tag into a fixed
// buffer in older kernels; 31 bytes works everywhere.
const maxTagLen = 31

func regularFile(field, path string) error {
	if !filepath.IsAbs(path) {
		return invalid("%s %q must be an absolute path", field, path)
	}
	fi, err := os.Stat(path)
	if err != nil {
		return precondition("%s: %v", field, err)
	}
	if !fi.Mode().IsRegular() {
		return invalid("%s %q is not a regular file", field, path)
	}
	return nil
}

func validMAC(s string) error {
	if s == "" {
		return fmt.Errorf("empty")
	}
	hw, err := net.ParseMAC(s)
	if err != nil {
		return err
	}
	if len(hw) != 6 {
		return fmt.Errorf("not a 48-bit MAC address")
	}
	if hw[0]&1 != 0 {
		return fmt.Errorf("a multicast address cannot be a NIC's address")
	}
	return nil
}

// resolveAccel turns "auto" into kvm or tcg: tcg for a guest of another
// architecture.
func (d *Driver) resolveAccel(accel, arch string) string {
	if accel != AccelAuto {
		return accel
	}
	if !nativeArch(arch) {
		return AccelTCG
	}
	d.kvmOnce.Do(func() { d.kvmOK = kvmUsable() })
	if d.kvmOK {
		return AccelKVM
	}
	return AccelTCG
}

// kvmUsable is auto's test: /dev/kvm opens read-write, and it is not the
// kvm_pvm flavour (a pvm host "has" kvm, but a stock guest kernel hangs or
// aborts on it).
func kvmUsable() bool {
	f, err := os.OpenFile("/dev/kvm", os.O_RDWR, 0)
	if err != nil {
		return false
	}
	f.Close()
	if _, err := os.Stat("/sys/module/kvm_pvm"); err == nil {
		return false
	}
	return true
}

// Create implements vm.Driver. It validates the spec and creates Dir; the
// machine starts with Start.
func (d *Driver) Create(ctx context.Context, spec *vm.Spec) (vm.Machine, error) {
	if err := d.Validate(spec); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(spec.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("creating the VM directory: %w", err)
	}
	c := d.config(spec)
	bin, err := exec.LookPath(c.binary)
	if err != nil {
		return nil, missingBinary(c, err)
	}
	c.binary = bin
	c.accel = d.resolveAccel(c.accel, c.arch)
	if c.arch == ArchAMD64 {
		c.firmware = QbootFor(bin)
	}
	s := *spec
	return newMachine(&s, c), nil
}

// QbootFor is the qboot firmware installed beside the QEMU binary bin
// (<prefix>/share/qemu/qboot.rom: Debian's qemu-system-data, Homebrew's
// qemu), or "" when there is none. qboot only loads the kernel QEMU was
// given and jumps to it: an amd64 guest reaches its agent about 200 ms
// sooner than through SeaBIOS, which first scans PCI for disks and
// option ROMs to boot from. It has no vmgenid (it cannot write the
// pointer QEMU's ACPI linker asks for), so a restored guest learns that
// it must reseed its RNG from the host instead (agent Reseed).
func QbootFor(bin string) string {
	p := filepath.Join(filepath.Dir(bin), "..", "share", "qemu", "qboot.rom")
	if fi, err := os.Stat(p); err == nil && fi.Mode().IsRegular() {
		return filepath.Clean(p)
	}
	return ""
}

// Args is the QEMU command line (without the executable) for spec with
// the accelerator already resolved to kvm or tcg. It is what Start runs,
// exposed for tests and for debugging. machine "" is the default of the
// spec's architecture; firmware "" is QEMU's default firmware.
func Args(spec *vm.Spec, accel, machine, firmware string) []string {
	arch := guestArch(spec)
	arm := arch == ArchARM64
	machine = machineFor(arch, machine)
	sock := func(name string) string { return socketPath(spec.Dir, name) }
	memMiB := guestRAMMiB(spec)
	// The guest RAM as a backend object of the machine's own RAM id (so
	// the state is the same migration stream as a VM's without one): in
	// a memfd the machine can read when it saves (a savable cold boot),
	// or the saved RAM file mapped copy-on-write (a restore from one).
	ram, ramID := ramBackingFor(spec, arch, machine)
	var ramObject string
	size := ",size=" + strconv.FormatInt(memMiB, 10) + "M"
	switch ram {
	case ramMapped:
		ramObject = "memory-backend-file,id=" + ramID + size + ",mem-path=" + optEscape(spec.RestoreRAM) + ",share=off"
	case ramMemfd:
		ramObject = "memory-backend-file,id=" + ramID + size + ",mem-path=/proc/self/fd/" + strconv.Itoa(ramFD) + ",share=on"
	}
	if ramObject != "" {
		machine += ",memory-backend=" + ramID
	}

	if arm {
		// The newest interrupt controller the accelerator has: GICv3
		// under TCG (GICv2 stops at 8 CPUs), the host's under kvm.
		machine += ",gic-version=max"
	}
	a := []string{
		"-name", spec.ID,
		"-M", machine,
		"-accel", accel,
	}
	switch {
	case accel == AccelKVM:
		a = append(a, "-cpu", "host")
	case arm:
		// virt's default CPU is a 32-bit cortex-a15; max has every
		// feature TCG emulates.
		a = append(a, "-cpu", "max")
	}
	if ramObject != "" {
		a = append(a, "-object", ramObject)
	}
	a = append(a,
		// QEMU parses what the guest sends (virtio rings, 9p, the agent
		// channel): if one of those parsers falls, the seccomp filter
		// keeps it from spawning programs, changing its privileges or
		// its scheduling, or using obsolete system calls.
		"-sandbox", "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny",
		"-nodefaults", "-no-user-config", "-nographic", "-display", "none",
		"-no-reboot",
		"-smp", strconv.Itoa(spec.CPUs),
		"-m", strconv.FormatInt(memMiB, 10)+"M",
		"-kernel", spec.Boot.Kernel,
	)
	if firmware != "" {
		a = append(a, "-bios", firmware)
	}
	if spec.Boot.Initrd != "" {
		a = append(a, "-initrd", spec.Boot.Initrd)
	}
	a = append(a, "-append", CmdlineFor(arch, accel, spec.Boot.Cmdline))
	a = append(a,
		// The console goes into a pipe the machine reads (consoleFD) and
		// writes to a bounded log: the guest decides how much it prints.
		"-chardev", "file,id=con,path=/proc/self/fd/"+strconv.Itoa(consoleFD),
		"-serial", "chardev:con",
		"-chardev", "socket,id=qmp,path="+optEscape(sock(QMPSocket))+",server=on,wait=off",
		"-mon", "chardev=qmp,mode=control",
		"-device", "virtio-serial-pci,id=vser",
		"-chardev", "socket,id=agent,path="+optEscape(sock(AgentSocket))+",server=on,wait=off",
		"-device", "virtserialport,bus=vser.0,chardev=agent,name=agent",
		// Entropy from the host: without it the guest's CRNG takes a
		// while to be ready under TCG.
		"-object", "rng-random,id=rng,filename=/dev/urandom",
		"-device", "virtio-rng-pci,rng=rng",
		// A memory balloon: a running pod's memory shrinks (and grows
		// back to its boot size) through it (Machine.SetMemoryTarget).
		"-device", "virtio-balloon-pci,id=balloon",
	)
	for i, disk := range spec.Disks {
		id := "disk" + strconv.Itoa(i)
		drive := "file=" + optEscape(disk.Path) + ",format=raw,if=none,id=" + id + ",cache=writeback,discard=unmap"
		if disk.ReadOnly {
			drive += ",readonly=on"
		}
		a = append(a, "-drive", drive, "-device", "virtio-blk-pci,drive="+id)
	}
	for i, s := range spec.Shares {
		id := "fs" + strconv.Itoa(i)
		// mapped-xattr: what the guest makes in a share is a plain file
		// or directory on the host, its owner, mode, symlink target or
		// device number kept in user.virtfs.* xattrs; a guest-made symlink
		// or device node is never one on the host, for the host (or
		// kubelet, or a backup) to follow or open. multidevs=remap: the
		// share has volumes from other file systems bound in it, whose
		// inode numbers would otherwise collide in the guest.
		//
		// A read-only share is exported as it is (security_model=none):
		// the guest can make nothing in it, and its host symlinks (the
		// ..data links of kubelet's ConfigMap and Secret volumes) must
		// read as symlinks, which the guest resolves inside the share;
		// mapped-xattr would refuse to read them (ELOOP).
		//
		// passthrough (the node VM's share): kubelet's ConfigMap, Secret
		// and log symlinks, modes and owners must be real on the host,
		// for the pods' VMs and the host's log readers.
		model := "mapped-xattr"
		switch {
		case s.ReadOnly:
			model = "none"
		case s.Passthrough:
			model = "passthrough"
		}
		fsdev := "local,id=" + id + ",path=" + optEscape(s.HostPath) + ",security_model=" + model + ",multidevs=remap"
		if s.ReadOnly {
			fsdev += ",readonly=on"
		}
		a = append(a, "-fsdev", fsdev, "-device", "virtio-9p-pci,fsdev="+id+",mount_tag="+s.Tag)
	}
	for i, n := range spec.NICs {
		id := "net" + strconv.Itoa(i)
		var netdev string
		switch n.Kind {
		case vm.NICTap:
			netdev = "tap,id=" + id + ",ifname=" + n.Device + ",script=no,downscript=no"
		default:
			netdev = "user,id=" + id
			for _, f := range n.Forwards {
				netdev += fmt.Sprintf(",hostfwd=%s:%s:%d-:%d", f.Protocol, f.HostIP, f.HostPort, f.GuestPort)
			}
		}
		// romfile= (empty): no PXE option ROM; we never boot from the net.
		a = append(a, "-netdev", netdev, "-device", "virtio-net-pci,netdev="+id+",mac="+n.MAC+",romfile=")
	}
	switch {
	case ram == ramMapped:
		// The state has no RAM in it (x-ignore-shared): the machine sets
		// that capability first, then starts the load (migrate-incoming
		// of stateFD).
		a = append(a, "-incoming", "defer")
	case spec.RestoreFrom != "":
		// The machine opens the state file and hands it over (stateFD):
		// no shell, so the sandbox can deny spawning.
		a = append(a, "-incoming", "fd:"+strconv.Itoa(stateFD))
	}
	return a
}

// machineFor is the -M value for a guest of arch: machine, or the
// architecture's default when it is "".
func machineFor(arch, machine string) string {
	switch {
	case machine != "":
		return machine
	case arch == ArchARM64:
		return ARM64Machine
	}
	return DefaultMachine
}

// guestRAMMiB is the spec's memory in whole MiB, rounded up (QEMU's -m).
func guestRAMMiB(spec *vm.Spec) int64 { return (spec.MemoryBytes + (1<<20 - 1)) >> 20 }

// ramBacking is what a VM's guest RAM lives in.
type ramBacking int

const (
	ramQEMU   ramBacking = iota // QEMU's own anonymous memory
	ramMemfd                    // a memfd the machine reads when it saves (vm.RAMFileSaver)
	ramMapped                   // the RAM file of the restored state, mapped copy-on-write
)

// ramBackingFor is what the RAM of a VM of spec lives in, and the RAM's
// id for a backend object: the memfd for a savable cold boot where
// memfds exist, the RAM file for a restore given one (spec.RestoreRAM),
// else QEMU's own. Only amd64's pc and q35 machines (RAM id pc.ram), the
// ones measured, leave QEMU's own.
func ramBackingFor(spec *vm.Spec, arch, machine string) (ramBacking, string) {
	name, _, _ := strings.Cut(machine, ",")
	if arch != ArchAMD64 || !(name == "q35" || name == "pc" || strings.HasPrefix(name, "pc-")) {
		return ramQEMU, ""
	}
	switch {
	case spec.RestoreFrom != "" && spec.RestoreRAM != "":
		return ramMapped, "pc.ram"
	case spec.RestoreFrom == "" && spec.Savable && memfdRAM:
		return ramMemfd, "pc.ram"
	}
	return ramQEMU, ""
}

// Cmdline is the kernel command line the driver passes to an amd64 guest
// under TCG: the spec's, plus console=ttyS0 (the console log is the first
// serial port), panic=-1 (a panicking guest reboots, which ends QEMU under
// -no-reboot), cryptomgr.notests (no crypto self-tests at boot) and
// mitigations=off (see CmdlineFor) unless the spec already sets console=,
// panic=, a cryptomgr. parameter or mitigations=.
func Cmdline(cmdline string) string { return CmdlineFor(ArchAMD64, AccelTCG, cmdline) }

// CmdlineFor is Cmdline for a guest of arch, whose first serial port is
// ttyS0 (amd64) or the PL011 ttyAMA0 (arm64), under accel (kvm or tcg):
// mitigations=off only under TCG.
func CmdlineFor(arch, accel, cmdline string) string {
	fields := strings.Fields(cmdline)
	has := func(key string) bool {
		for _, f := range fields {
			if f == "--" {
				return false
			}
			if strings.HasPrefix(f, key) {
				return true
			}
		}
		return false
	}
	var pre []string
	if !has("console=") {
		con := arches[arch].console
		if con == "" {
			con = arches[ArchAMD64].console
		}
		pre = append(pre, "console="+con)
	}
	if !has("panic=") {
		pre = append(pre, "panic=-1")
	}
	if !has("cryptomgr.") {
		// The kernel tests each crypto algorithm it registers; under TCG
		// that is a third of a second of every cold boot (measured on
		// Debian's 6.1 kernel), for code that is the same every boot. An
		// image that wants the tests sets cryptomgr.notests=0 itself.
		pre = append(pre, "cryptomgr.notests")
	}
	if accel == AccelTCG && !has("mitigations=") {
		// The guest kernel's defences against speculative execution
		// (retpolines, return-stack filling on every switch, barriers)
		// protect nothing under TCG: the guest's code never runs as
		// written, its branches and barriers become QEMU's translated
		// host code, whose speculation the guest's sequences do not
		// govern. They only cost the one emulated vCPU on every
		// indirect call and context switch. Under KVM (and vz) the guest
		// runs on the real CPU and keeps them; the host's own defences
		// are QEMU's and the host kernel's either way. An image that
		// wants them sets mitigations=auto itself.
		pre = append(pre, "mitigations=off")
	}
	return strings.TrimSpace(strings.Join(append(pre, cmdline), " "))
}

// optEscape escapes a value for QEMU's key=value,... option syntax, where
// a comma is written twice.
func optEscape(s string) string { return strings.ReplaceAll(s, ",", ",,") }

// maxSocketPath is the longest path bind(2)/connect(2) take for a unix
// socket (sun_path is 108 bytes including the terminating NUL).
const maxSocketPath = 107

// The descriptors QEMU inherits (3 is the first after stdio).
const (
	consoleFD = 3 // the write end of the console pipe
	dirFD     = 4 // Dir, for socket paths too long for sun_path
	stateFD   = 5 // the saved state a restore reads
	ramFD     = 6 // the memfd of a savable cold boot's RAM
)

// socketPath is the path QEMU and DialAgent use for a socket in dir.
// When dir/name is too long for sun_path, QEMU is handed dir as file
// descriptor dirFD and binds /proc/self/fd/<dirFD>/name, which names the
// same file; our side connects through /proc/self/fd of its own handle.
func socketPath(dir, name string) string {
	p := filepath.Join(dir, name)
	if len(p) <= maxSocketPath {
		return p
	}
	return "/proc/self/fd/" + strconv.Itoa(dirFD) + "/" + name
}

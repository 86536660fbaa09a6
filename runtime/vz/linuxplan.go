package vz

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"github.com/containerd/errdefs"

	"github.com/macvz/macvz/runtime/vm"
)

// A Linux guest on vz is the guest runtime/qemu boots: a kernel and an
// initrd whose /init is macvz-agent, no firmware. What differs is the
// hardware the framework offers, and so the command line (LinuxCmdline):
//
//   - the only console is a virtio console, hvc0 (the framework has no
//     PL011 or 16550 UART);
//   - the agent's channel is vsock (no virtio-serial): the agent is told
//     to listen on AgentPort through its init arguments;
//   - shares are virtiofs (runtime/sandbox asks the agent to mount them
//     with fstype virtiofs on this backend), not 9p.
//
// What the guest image must have for that (Debian's arm64 kernel builds
// all of these as modules): virtio_pci, virtio_console, vsock,
// vmw_vsock_virtio_transport_common, vmw_vsock_virtio_transport and
// virtiofs in the agent's module list, and a /dev/null in the initrd:
// the console is a module, so the kernel has no /dev/console to give
// /init, and Go's runtime opens /dev/null on a closed stdin, stdout or
// stderr (it aborts when it cannot).

// LinuxBoot is VZLinuxBootLoader's configuration.
type LinuxBoot struct {
	// Kernel is an uncompressed arm64 Image: the framework loads an
	// arm64 kernel as it is and does not decompress it. Debian's arm64
	// vmlinuz is such an Image despite its name; a gzip-compressed
	// kernel (which some distributions ship) or an EFI zboot image must
	// be unpacked first. NewPlan checks the Image header.
	Kernel string
	// Initrd is the initial RAM disk, "" for none.
	Initrd string
	// CmdLine is LinuxCmdline of the image's command line.
	CmdLine string
}

// LinuxConsole is a Linux guest's console device under vz: the virtio
// console (the framework's only serial port), which the guest calls hvc0.
const LinuxConsole = "hvc0"

// AgentListenArg is the init argument that makes the agent serve on vsock
// port AgentPort, where DialAgent connects. As init the agent listens on
// a virtio-serial port by default (QEMU guests).
var AgentListenArg = "--listen=vsock:" + strconv.Itoa(AgentPort)

// maxCmdline is the longest command line an arm64 kernel takes:
// COMMAND_LINE_SIZE is 2048 bytes there, the terminating NUL included.
const maxCmdline = 2047

// maxLinuxTag is the longest virtiofs tag a Linux guest can see: the
// virtio spec's virtio_fs_config has a 36-byte tag field.
const maxLinuxTag = 36

// arm64ImageMagic is the magic of an arm64 Image's 64-byte header, at
// offset 56 (Linux's Documentation/arch/arm64/booting.rst: 0x644d5241,
// little-endian).
var arm64ImageMagic = []byte("ARM\x64")

// errLinuxRestore is why a Linux guest is always booted cold here.
var errLinuxRestore = fmt.Errorf("vz: a Linux guest cannot be restored from a saved state: the framework gives it no VM generation ID device, "+
	"so it would not know to reseed its RNG and guests restored from one state would share their random numbers: %w", errdefs.ErrFailedPrecondition)

// linuxBoot checks a Linux guest's boot fields and files.
func linuxBoot(spec *vm.Spec) (*LinuxBoot, error) {
	if spec.Arch != "" && spec.Arch != "arm64" {
		return nil, bad("arch %q: Virtualization.framework runs arm64 Linux guests only (Apple silicon)", spec.Arch)
	}
	if spec.RestoreFrom != "" {
		return nil, fmt.Errorf("restoreFrom: %w; boot it cold", errLinuxRestore)
	}
	if err := checkKernel(spec.Boot.Kernel); err != nil {
		return nil, err
	}
	if f := spec.Boot.Initrd; f != "" {
		if err := regularFile("boot.initrd", f); err != nil {
			return nil, err
		}
	}
	if strings.ContainsAny(spec.Boot.Cmdline, "\n\x00") {
		return nil, bad("boot.cmdline contains a newline or NUL")
	}
	if l, ok := listenArg(spec.Boot.Cmdline); ok && l != AgentListenArg {
		return nil, bad("boot.cmdline: the agent's init argument %q: under vz the agent must listen on vsock port %d (%s)", l, AgentPort, AgentListenArg)
	}
	cl := LinuxCmdline(spec.Boot.Cmdline)
	if len(cl) > maxCmdline {
		return nil, bad("boot.cmdline: %d bytes with this backend's additions; an arm64 kernel takes %d", len(cl), maxCmdline)
	}
	return &LinuxBoot{Kernel: spec.Boot.Kernel, Initrd: spec.Boot.Initrd, CmdLine: cl}, nil
}

// checkKernel makes sure path is an uncompressed arm64 Image, the one
// kernel format VZLinuxBootLoader boots on Apple silicon.
func checkKernel(path string) error {
	if path == "" {
		return bad("boot.kernel is empty: a Linux guest boots a kernel directly")
	}
	if err := regularFile("boot.kernel", path); err != nil {
		return err
	}
	f, err := os.Open(path)
	if err != nil {
		return precondition("boot.kernel: %v", err)
	}
	defer f.Close()
	hdr := make([]byte, 64)
	if _, err := io.ReadFull(f, hdr); err != nil {
		return bad("boot.kernel %q is too short to be an arm64 Image", path)
	}
	switch {
	case hdr[0] == 0x1f && hdr[1] == 0x8b:
		return bad("boot.kernel %q is gzip-compressed: the framework boots an uncompressed arm64 Image (gunzip it)", path)
	case !bytes.Equal(hdr[56:60], arm64ImageMagic):
		return bad("boot.kernel %q is not an uncompressed arm64 Image (no ARM\\x64 magic at byte 56; an amd64 kernel, or a compressed one?)", path)
	}
	return nil
}

// regularFile checks that field's path is absolute (a spec's mistake
// otherwise) and names a regular file (the host's, when it is missing).
func regularFile(field, path string) error {
	if !filepath.IsAbs(path) {
		return bad("%s %q must be an absolute path", field, path)
	}
	fi, err := os.Stat(path)
	if err != nil {
		return precondition("%s: %v", field, err)
	}
	if !fi.Mode().IsRegular() {
		return bad("%s %q is not a regular file", field, path)
	}
	return nil
}

// LinuxCmdline is the command line a Linux guest boots with under vz: the
// image's, plus console=hvc0 (last, so that it is /dev/console; the
// image's may name QEMU's serial port), panic=-1 unless the image sets
// panic= (a panicking guest restarts, which stops a vz VM: the runtime
// sees it end), and AgentListenArg first among init's arguments (after
// "--") unless the image already has it there.
func LinuxCmdline(cmdline string) string {
	kernel, initArgs := splitInitArgs(cmdline)
	fields := strings.Fields(kernel)
	kernel = strings.TrimSpace(kernel)
	if !slices.Contains(fields, "console="+LinuxConsole) {
		kernel += " console=" + LinuxConsole
	}
	if !slices.ContainsFunc(fields, func(f string) bool { return strings.HasPrefix(f, "panic=") }) {
		kernel += " panic=-1"
	}
	initArgs = strings.TrimSpace(initArgs)
	if _, ok := listenArg(cmdline); !ok {
		initArgs = strings.TrimSpace(AgentListenArg + " " + initArgs)
	}
	return strings.TrimSpace(kernel) + " -- " + initArgs
}

// listenArg is the agent's --listen flag among init's arguments in
// cmdline, as one argument ("--listen=vsock:1024", or "-listen X" joined
// as "--listen=X").
func listenArg(cmdline string) (string, bool) {
	_, initArgs := splitInitArgs(cmdline)
	args := strings.Fields(initArgs)
	for i, a := range args {
		name, val, hasVal := strings.Cut(strings.TrimLeft(a, "-"), "=")
		if !strings.HasPrefix(a, "-") || name != "listen" {
			continue
		}
		if !hasVal && i+1 < len(args) {
			val = args[i+1]
		}
		return "--listen=" + val, true
	}
	return "", false
}

// splitInitArgs splits a kernel command line at its first "--" argument
// outside double quotes, as the kernel reads it: what follows is init's
// arguments, passed to it as they are.
func splitInitArgs(cmdline string) (kernel, initArgs string) {
	quoted, start := false, -1
	for i := 0; i <= len(cmdline); i++ {
		end := i == len(cmdline)
		if !end && cmdline[i] == '"' {
			quoted = !quoted
		}
		if end || (!quoted && (cmdline[i] == ' ' || cmdline[i] == '\t')) {
			if start >= 0 && cmdline[start:i] == "--" {
				return cmdline[:start], cmdline[i:]
			}
			start = -1
		} else if start < 0 {
			start = i
		}
	}
	return cmdline, ""
}

// Package agentinstall puts the macvz guest agent and its launchd job
// into a macOS VM disk image (a Tart VM's disk.img), so that any macOS
// image can run as a macvz pod: `macvz image install-agent`.
//
// The disk is attached without mounting (hdiutil), the APFS volume with
// the Data role is found among the containers on its partitions
// (diskutil apfs list; disks.go says how the image's disk is told from
// the synthesized APFS containers hdiutil may list with it) and mounted
// nosuid,nodev with ownership on at a private mount point, the files are
// written there as root:wheel without ever following the guest's
// symlinks (beneath.go), the launchd jobs of Tart's guest agent are
// moved out of launchd's directories (tart.go), and everything is
// unmounted and detached again, also on failure. Only macOS has the
// tools; the sequence and the parsing of their property lists are
// platform-neutral and tested with captured output.
package agentinstall

import (
	"bytes"
	"context"
	"debug/macho"
	_ "embed"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/containerd/errdefs"
	"golang.org/x/sys/unix"
)

// LaunchdPlist is the agent's launchd job: vsock port 1024, --system.
//
//go:embed io.macvz.agent.plist
var LaunchdPlist []byte

// Where the files go, relative to the Data volume's root (which macOS
// firmlinks at /usr/local and /Library).
const (
	AgentPath = "usr/local/bin/macvz-agent"
	PlistPath = "Library/LaunchDaemons/io.macvz.agent.plist"
)

// Runner runs a system tool and returns its standard output.
type Runner func(ctx context.Context, tool string, args ...string) ([]byte, error)

// ExecRunner runs tools with os/exec, their stderr in the error.
func ExecRunner(ctx context.Context, tool string, args ...string) ([]byte, error) {
	var stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, tool, args...)
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return out, fmt.Errorf("%s %s: %v: %s", filepath.Base(tool), strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return out, nil
}

// Installer holds what Install needs besides its arguments.
type Installer struct {
	Run Runner
	// Chown sets the owner of a file or directory the installer made, by
	// descriptor (nil: fchown(2)); launchd refuses a job whose plist is
	// not root's.
	Chown func(fd, uid, gid int) error
	// MountDir is where the Data volume is mounted ("" = a new temporary
	// directory).
	MountDir string
	// KeepTartAgent leaves the launchd jobs of Tart's guest agent as
	// they are (tart.go).
	KeepTartAgent bool
	Log           *slog.Logger
}

// Result is what Install did.
type Result struct {
	// Device is the image's disk while it was attached ("/dev/disk4")
	// and Volume the Data volume written to ("disk6s4").
	Device, Volume string
	// Disabled are the launchd jobs of Tart's guest agent taken out of
	// launchd's directories.
	Disabled []DisabledJob
}

// DiskImage finds the disk image of path: the file itself, or disk.img
// in a Tart VM directory.
func DiskImage(path string) (string, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return "", fmt.Errorf("the VM disk image: %w", errdefs.ErrNotFound)
	}
	if fi.IsDir() {
		d := filepath.Join(path, "disk.img")
		if _, err := os.Stat(d); err != nil {
			return "", fmt.Errorf("%s has no disk.img: give a Tart VM directory (~/.tart/vms/NAME) or a disk image: %w", path, errdefs.ErrNotFound)
		}
		return d, nil
	}
	return path, nil
}

// CheckAgent makes sure agent is a macOS arm64 executable, the one a
// macOS guest on Apple silicon can run (`make agent-darwin` builds it).
func CheckAgent(agent string) error {
	f, err := macho.Open(agent)
	if err != nil {
		return fmt.Errorf("%s is not a macOS executable (build it with GOOS=darwin GOARCH=arm64: make agent-darwin): %v: %w", agent, err, errdefs.ErrInvalidArgument)
	}
	defer f.Close()
	if f.Cpu != macho.CpuArm64 || f.Type != macho.TypeExec {
		return fmt.Errorf("%s is a %v %v Mach-O file; macOS guests need an arm64 executable: %w", agent, f.Cpu, f.Type, errdefs.ErrInvalidArgument)
	}
	return nil
}

// Install copies agent and the launchd job into the Data volume of the
// macOS disk image disk, and disables the launchd jobs of Tart's guest
// agent there unless KeepTartAgent is set. The image must not be in use
// by a running VM.
func (in *Installer) Install(ctx context.Context, disk, agent string) (res *Result, err error) {
	log := in.Log
	if log == nil {
		log = slog.Default()
	}
	if err := CheckAgent(agent); err != nil {
		return nil, err
	}
	out, err := in.Run(ctx, "hdiutil", "attach", "-nomount", "-noverify", "-noautofsck",
		"-imagekey", "diskimage-class=CRawDiskImage", "-plist", disk)
	if err != nil {
		return nil, fmt.Errorf("attaching %s (is its VM still running?): %w", disk, err)
	}
	att, aerr := attachedDevices(out)
	if att.whole == "" {
		return nil, fmt.Errorf("%s: %w (it may still be attached: see hdiutil info)", disk, aerr)
	}
	whole := "/dev/" + att.whole
	defer func() {
		// The image stays attached otherwise and cannot boot: detach
		// even when the context is done.
		if _, derr := in.Run(context.WithoutCancel(ctx), "hdiutil", "detach", whole); derr != nil {
			err = errors.Join(err, fmt.Errorf("detaching %s (run `hdiutil detach %s`): %w", whole, whole, derr))
		}
	}()
	if aerr != nil {
		return nil, fmt.Errorf("%s: %w", disk, aerr)
	}
	log.Info("disk image attached", "disk", disk, "device", whole)
	list, err := in.Run(ctx, "diskutil", "apfs", "list", "-plist")
	if err != nil {
		return nil, err
	}
	vol, err := dataVolume(list, att)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", disk, err)
	}
	res = &Result{Device: whole, Volume: vol}
	dir := in.MountDir
	if dir == "" {
		if dir, err = os.MkdirTemp("", "macvz-install-agent-"); err != nil {
			return nil, err
		}
		defer os.Remove(dir)
	}
	// The volume is the image's: nothing on it may become a setuid
	// program or a device node of the host.
	if _, err := in.Run(ctx, "diskutil", "mount", "-mountOptions", "nosuid,nodev", "-mountPoint", dir, vol); err != nil {
		return nil, fmt.Errorf("mounting the Data volume %s: %w", vol, err)
	}
	defer func() {
		if _, uerr := in.Run(context.WithoutCancel(ctx), "diskutil", "unmount", dir); uerr != nil {
			err = errors.Join(err, fmt.Errorf("unmounting %s: %w", dir, uerr))
		}
	}()
	// Volumes of attached images ignore ownership by default: the files
	// would belong to whoever reads them.
	if _, err := in.Run(ctx, "diskutil", "enableOwnership", dir); err != nil {
		return nil, err
	}
	root, err := openRoot(dir)
	if err != nil {
		return nil, err
	}
	defer unix.Close(root)
	chown := in.Chown
	if chown == nil {
		chown = unix.Fchown
	}
	if err := writeBeneath(root, AgentPath, func(w io.Writer) error {
		f, err := os.Open(agent)
		if err != nil {
			return err
		}
		defer f.Close()
		_, err = io.Copy(w, f)
		return err
	}, 0o755, chown); err != nil {
		return nil, err
	}
	if err := writeBeneath(root, PlistPath, func(w io.Writer) error {
		_, err := w.Write(LaunchdPlist)
		return err
	}, 0o644, chown); err != nil {
		return nil, err
	}
	log.Info("agent installed", "disk", disk, "volume", vol, "agent", "/"+AgentPath, "launchd", "/"+PlistPath)
	if !in.KeepTartAgent {
		res.Disabled, err = disableTartAgent(root, chown)
		for _, j := range res.Disabled {
			log.Info("tart-guest-agent's launchd job disabled", "label", j.Label, "from", j.From, "to", j.To)
		}
		if err != nil {
			return nil, err
		}
	}
	return res, nil
}

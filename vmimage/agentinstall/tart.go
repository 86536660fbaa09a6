package agentinstall

import (
	"fmt"
	"os"
	"path"
	"sort"
	"strings"

	"golang.org/x/sys/unix"
	"howett.net/plist"
)

// Tart's images run tart-guest-agent from launchd: a root daemon
// (/Library/LaunchDaemons/org.cirruslabs.tart-guest-daemon.plist,
// Program /opt/homebrew/bin/tart-guest-agent) and a global agent in
// every user session (/Library/LaunchAgents/org.cirruslabs.tart-guest-
// agent.plist). They serve Tart's host (disk resizing, clipboard, tart
// exec); under macvz there is no Tart on the other end, and the root
// daemon may signal its parent when the Tart device is missing.
// install-agent takes both out of launchd's way.
//
// How: the job's plist is moved out of the directory launchd loads jobs
// from (launchd(8), FILES: /Library/LaunchDaemons for system-wide
// daemons, /Library/LaunchAgents for per-user agents provided by the
// administrator) into DisabledDir, where moving it back enables it
// again. Not the plist's Disabled key: launchd.plist(5) calls it a
// default that `launchctl enable/disable` overrides, and those
// overrides live in launchd's own database, which the image may already
// hold for the label.

// DisabledDir is where install-agent moves the launchd jobs it disables,
// relative to the Data volume's root (/Library/macvz/disabled-launchd-
// jobs in the guest), one directory per launchd directory.
const DisabledDir = "Library/macvz/disabled-launchd-jobs"

// jobDirs are launchd's directories on the Data volume that install-agent
// looks for tart-guest-agent's jobs in.
var jobDirs = []string{"Library/LaunchDaemons", "Library/LaunchAgents"}

// tartLabelPrefix starts the labels (and file names) of Tart's guest
// agent jobs.
const tartLabelPrefix = "org.cirruslabs.tart-guest"

// tartBinary is the guest agent's executable name.
const tartBinary = "tart-guest-agent"

// maxJobPlist bounds the size of a launchd plist read to identify it.
const maxJobPlist = 1 << 20

// DisabledJob is a launchd job install-agent disabled.
type DisabledJob struct {
	// Label is the job's label (its file name without .plist when the
	// plist cannot be read).
	Label string
	// From and To are the plist's paths in the guest, before and after.
	From, To string
}

// disableTartAgent moves every job of jobDirs that runs tart-guest-agent
// into DisabledDir. A directory that is missing is skipped; one that is
// a symlink is refused (as for every path on the volume: beneath.go).
func disableTartAgent(root int, chown func(fd, uid, gid int) error) ([]DisabledJob, error) {
	var done []DisabledJob
	for _, rel := range jobDirs {
		dir, err := openDirBeneath(root, rel, nil)
		if err != nil {
			return done, err
		}
		if dir < 0 {
			continue
		}
		names, err := dirNames(dir)
		if err != nil {
			unix.Close(dir)
			return done, fmt.Errorf("listing /%s in the guest: %w", rel, err)
		}
		for _, name := range names {
			label, ok := tartJob(dir, name)
			if !ok {
				continue
			}
			to := DisabledDir + "/" + path.Base(rel)
			dst, err := openDirBeneath(root, to, chown)
			if err == nil {
				err = unix.Renameat(dir, name, dst, name)
				unix.Close(dst)
			}
			if err != nil {
				unix.Close(dir)
				return done, fmt.Errorf("disabling tart-guest-agent's launchd job /%s/%s: %w", rel, name, err)
			}
			done = append(done, DisabledJob{Label: label, From: "/" + rel + "/" + name, To: "/" + to + "/" + name})
		}
		unix.Close(dir)
	}
	return done, nil
}

// tartJob reports whether the entry name of the launchd directory dir is
// a job of Tart's guest agent: by its file name, or by the label or
// program its plist names. A plist that cannot be read or parsed (a
// symlink, not a regular file, too large, not a property list) is
// judged by its name alone.
func tartJob(dir int, name string) (label string, ok bool) {
	label = strings.TrimSuffix(name, ".plist")
	byName := strings.HasPrefix(name, tartLabelPrefix)
	var job struct {
		Label            string   `plist:"Label"`
		Program          string   `plist:"Program"`
		ProgramArguments []string `plist:"ProgramArguments"`
	}
	b, err := readJobPlist(dir, name)
	if err == nil {
		_, err = plist.Unmarshal(b, &job)
	}
	if err != nil {
		return label, byName
	}
	if job.Label != "" && !strings.ContainsAny(job.Label, "\x00\n") {
		label = job.Label
	}
	prog := job.Program
	if prog == "" && len(job.ProgramArguments) > 0 {
		prog = job.ProgramArguments[0]
	}
	return label, byName || strings.HasPrefix(job.Label, tartLabelPrefix) || path.Base(prog) == tartBinary
}

// readJobPlist reads the regular file name in dir, without following a
// symlink, up to maxJobPlist bytes.
func readJobPlist(dir int, name string) ([]byte, error) {
	fd, err := unix.Openat(dir, name, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	f := os.NewFile(uintptr(fd), name)
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if !st.Mode().IsRegular() || st.Size() > maxJobPlist {
		return nil, fmt.Errorf("%s: not a regular file of at most %d bytes", name, maxJobPlist)
	}
	b := make([]byte, st.Size())
	n, err := f.ReadAt(b, 0)
	if n < len(b) {
		return nil, fmt.Errorf("%s: short read: %v", name, err)
	}
	return b, nil
}

// dirNames lists the directory dir (a descriptor the caller keeps),
// sorted.
func dirNames(dir int) ([]string, error) {
	fd, err := unix.Dup(dir)
	if err != nil {
		return nil, err
	}
	f := os.NewFile(uintptr(fd), "dir")
	defer f.Close()
	names, err := f.Readdirnames(-1)
	sort.Strings(names)
	return names, err
}

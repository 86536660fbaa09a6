package agent

import (
	"errors"
	"log/slog"
	"os"
	"strings"

	"golang.org/x/sys/unix"
)

// fstabFlags are the fstab options that are mount flags; the others are
// the file system's data. defaults, auto, nofail, user options and
// x-* options mean nothing to a plain mount(2) and are dropped.
var fstabFlags = map[string]uintptr{
	"ro": unix.MS_RDONLY, "nosuid": unix.MS_NOSUID, "nodev": unix.MS_NODEV, "noexec": unix.MS_NOEXEC,
	"relatime": unix.MS_RELATIME, "noatime": unix.MS_NOATIME, "nodiratime": unix.MS_NODIRATIME,
	"sync": unix.MS_SYNCHRONOUS, "dirsync": unix.MS_DIRSYNC, "bind": unix.MS_BIND, "rbind": unix.MS_BIND | unix.MS_REC,
}

func mountFlags(options []string) (uintptr, string) {
	var flags uintptr
	var data []string
	for _, o := range options {
		switch {
		case o == "" || o == "defaults" || o == "auto" || o == "nofail" || o == "rw" || o == "user" || o == "nouser" || strings.HasPrefix(o, "x-"):
		case fstabFlags[o] != 0:
			flags |= fstabFlags[o]
		default:
			data = append(data, o)
		}
	}
	return flags, strings.Join(data, ",")
}

// mountFstab mounts the image's /etc/fstab entries, in order (the node
// image puts kubelet's root dir on a tmpfs, a file system its cAdvisor
// knows). A failed entry is logged and the rest go on, as with nofail.
func mountFstab(log *slog.Logger, path string) {
	f, err := os.Open(path)
	if err != nil {
		if !errors.Is(err, os.ErrNotExist) {
			log.Warn("fstab", "path", path, "err", err)
		}
		return
	}
	defer f.Close()
	entries, err := parseFstab(f)
	if err != nil {
		log.Warn("fstab", "path", path, "err", err)
		return
	}
	for _, e := range entries {
		flags, data := mountFlags(e.options)
		if err := os.MkdirAll(e.target, 0o755); err != nil {
			log.Warn("fstab: mount point", "target", e.target, "err", err)
			continue
		}
		if err := unix.Mount(e.source, e.target, e.fstype, flags, data); err != nil {
			log.Warn("fstab: mount failed", "source", e.source, "target", e.target, "fstype", e.fstype, "err", err)
			continue
		}
		log.Info("fstab: mounted", "target", e.target, "fstype", e.fstype)
	}
}

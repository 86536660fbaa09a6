package sandbox

import (
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/macvz/macvz/runtime/safefs"
)

// hostBindMounts: a volume of a container started later is bound into
// the VM's share on the host.
const hostBindMounts = true

// The share's own files live on a small tmpfs: the guest writes the share
// (9p), so what it can put there is bounded, and nothing it makes there
// (a device node, a setuid file) means anything on the host. Volumes are
// bound below it; only mount points live on the tmpfs itself.
const (
	shareTmpfsSize   = 4 << 20
	shareTmpfsInodes = 4096
)

// prepareShare makes each of the sandbox's share directories the root
// of a tmpfs of its own, unless it is one already (a VM booted again).
func prepareShare(sbDir string) error {
	for _, d := range []string{sharedDir, sharedRODir} {
		dir := filepath.Join(sbDir, d)
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return err
		}
		if ok, err := safefs.IsMountPoint(dir); err != nil || ok {
			if err != nil {
				return err
			}
			continue
		}
		if err := safefs.MountTmpfs(dir, shareTmpfsSize, shareTmpfsInodes); err != nil {
			return err
		}
	}
	return nil
}

// bindVolume makes a host path visible in the sandbox's share (the
// read-only one for a read-only volume) as <cid>/<i> with a bind mount: the share was set when the VM booted, and
// a bind is how a volume of a later container gets into it. A file is
// bound onto a file. The guest can write the share, so every step below
// the share resolves beneath it without following a symlink (it may have
// planted one where the mount point goes, once it learnt the container
// ID), and the bind is private, nosuid, nodev and, for a read-only
// volume, read-only on every mount below it.
func bindVolume(sbDir, cid string, i int, src string, readOnly bool) error {
	fi, err := os.Stat(src)
	if err != nil {
		return err
	}
	share, err := safefs.OpenRoot(filepath.Join(sbDir, shareDir(readOnly)))
	if err != nil {
		return err
	}
	defer share.Close()
	cdir, err := share.MkdirOpen(cid, 0o700)
	if err != nil {
		return err
	}
	defer cdir.Close()
	mp, err := cdir.MountPoint(strconv.Itoa(i), fi.IsDir())
	if err != nil {
		return err
	}
	defer mp.Close()
	return safefs.BindOnto(src, mp, readOnly)
}

// unmountUnder unmounts every mount at or below base/rel, deepest first.
// base is the host's own directory (the sandbox's), resolved here
// because mountinfo records resolved paths (/var/run/macvz is
// /run/macvz there); rel is never resolved: below base the guest may
// have planted symlinks.
func unmountUnder(base, rel string) error {
	rbase, err := filepath.EvalSymlinks(base)
	if os.IsNotExist(err) {
		return nil
	}
	if err != nil {
		return err
	}
	dir := filepath.Join(rbase, rel)
	ms, err := safefs.Mounts()
	if err != nil {
		return err
	}
	var targets []string
	for _, m := range ms {
		if m.Point == dir || strings.HasPrefix(m.Point, dir+"/") {
			targets = append(targets, m.Point)
		}
	}
	sort.Slice(targets, func(i, j int) bool { return len(targets[i]) > len(targets[j]) })
	for _, t := range targets {
		// UMOUNT_NOFOLLOW: a mount point's path the guest renamed a
		// parent of, then replaced by a symlink, is not followed.
		if err := unix.Unmount(t, unix.MNT_DETACH|unix.UMOUNT_NOFOLLOW); err != nil && err != unix.EINVAL && err != unix.ENOENT {
			return fmt.Errorf("unmounting %s: %w", t, err)
		}
	}
	return nil
}

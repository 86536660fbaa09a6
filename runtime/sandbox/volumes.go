package sandbox

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"path"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/containerd/errdefs"

	"github.com/macvz/macvz/runtime/agentapi"
	"github.com/macvz/macvz/runtime/shim"
	"github.com/macvz/macvz/runtime/store"
	"github.com/macvz/macvz/runtime/vm"
	"github.com/macvz/macvz/snapshotter"
)

// Volumes of a vz VM. A host without bind mounts (macOS) cannot put a
// later container's volume under the shared directory, and a vz VM's
// shares are fixed when it boots (Code-Hex/vz exposes no way to change
// a running VM's directory shares). So such a VM boots with one more
// virtiofs device, the volume share (volumeTag): a
// VZMultipleDirectoryShare whose entries, named "0", "1", ... (never
// after a path), are the host directories its containers' volumes can
// come from, found when it boots:
//
//   - below each configured volume root (kubelet's pods directory,
//     shared with the node VM at the same path), the pod's own
//     <root>/<pod UID>/volumes/<plugin>/<name> directories, which
//     kubelet makes and fills before RunPodSandbox; read-only for the
//     kinds kubelet writes itself (secret, configMap, projected,
//     downward API);
//   - the directories the pod's macvz.io/volume-dirs annotation lists
//     (where its runtime handler allows it), writable;
//   - always, last, the sandbox's own image-volume directory
//     (imageVolumeDir, entry "images", read-only), empty at boot: a
//     container's image volume (an image's file tree, or its sub path)
//     is cloned into it when the container starts (clonefile on APFS:
//     instant, no space), which the running VM then sees.
//
// Never the pod's whole directory nor the whole root: other pods'
// volumes are there. Nor <root>/<pod UID>/containers, where kubelet
// keeps each container's termination-log file and reads it back when
// the container ends: shared writable, the guest could swap the file for
// a symlink that kubelet then follows, and a file of the node (its
// kubeconfig, its client key) would become the pod's termination
// message. Termination logs are left out (see volumeRuleFor). BindVolumes then finds each volume's host path
// below one entry and asks the agent for that subpath of the share.

// volumeTag is the volume share's tag (short enough for a Linux guest's
// virtiofs).
const volumeTag = "macvz-vol"

// imageVolumeDir is the sandbox directory the volume share exports as
// its entry "images": the clones of the image volumes of the sandbox's
// containers. It is there on every VM (warm states see the same
// devices), so a share never lacks an entry.
const (
	imageVolumeDir   = "image-volumes"
	imageVolumeEntry = "images"
)

// guestVolumeDirFor is where the agent mounts the volume share in a
// guest of the OS.
func guestVolumeDirFor(guestOS string) string { return guestSharedDirFor(guestOS) + "-vol" }

// readOnlyVolumeKinds are kubelet's volume plugins whose directories it
// writes itself (atomically, through ..data symlinks) and containers
// only read.
var readOnlyVolumeKinds = map[string]bool{
	"kubernetes.io~secret":       true,
	"kubernetes.io~configmap":    true,
	"kubernetes.io~projected":    true,
	"kubernetes.io~downward-api": true,
}

// volumeDir is a host directory of the volume share.
type volumeDir struct {
	path string
	ro   bool
}

// podUIDElem says whether a pod UID (from the CRI caller) can name a
// directory below a volume root: one plain path element, nothing that
// leads elsewhere.
func podUIDElem(uid string) bool {
	return uid != "" && uid != "." && uid != ".." && len(uid) <= 255 &&
		!strings.ContainsAny(uid, "/\\\x00") && filepath.IsLocal(uid)
}

// realDir says whether p is a directory itself, not a symlink to one.
func realDir(p string) bool {
	fi, err := os.Lstat(p)
	return err == nil && fi.IsDir()
}

// podVolumeDirs finds, below each root, the pod's volume directories.
// Nothing below a root is followed through a symlink: a symlink where a
// directory belongs is left out (and logged).
func podVolumeDirs(log *slog.Logger, roots []string, uid string) []volumeDir {
	if !podUIDElem(uid) {
		if uid != "" {
			log.Warn("the pod's UID cannot name a directory; none of its volumes is shared with the VM", "uid", uid)
		}
		return nil
	}
	var out []volumeDir
	for _, root := range roots {
		pod := filepath.Join(root, uid)
		vols := filepath.Join(pod, "volumes")
		if !realDir(pod) || !realDir(vols) {
			continue
		}
		plugins, err := os.ReadDir(vols)
		if err != nil {
			log.Warn("listing the pod's volumes", "dir", vols, "err", err)
		}
		for _, pl := range plugins {
			pdir := filepath.Join(vols, pl.Name())
			if !realDir(pdir) {
				log.Warn("not a directory where kubelet keeps a volume plugin's volumes; left out", "path", pdir)
				continue
			}
			names, err := os.ReadDir(pdir)
			if err != nil {
				log.Warn("listing the pod's volumes", "dir", pdir, "err", err)
			}
			for _, n := range names {
				d := filepath.Join(pdir, n.Name())
				if !realDir(d) {
					log.Warn("a volume that is not a directory (a symlink?) is left out", "path", d)
					continue
				}
				out = append(out, volumeDir{d, readOnlyVolumeKinds[pl.Name()]})
			}
		}
	}
	return out
}

// terminationLog says whether hostPath is in the pod's containers
// directory below one of roots: kubelet's termination-log files, which
// are never shared (see the top of this file).
func terminationLog(roots []string, uid, hostPath string) bool {
	if !podUIDElem(uid) {
		return false
	}
	for _, root := range roots {
		rel, err := filepath.Rel(filepath.Join(root, uid), hostPath)
		if err != nil || !filepath.IsLocal(rel) {
			continue
		}
		if first, _, _ := strings.Cut(filepath.ToSlash(rel), "/"); first == "containers" {
			return true
		}
	}
	return false
}

// extraVolumeDirs are the directories of the macvz.io/volume-dirs
// annotation that still are directories (RunPodSandbox checked them).
func extraVolumeDirs(log *slog.Logger, dirs []string) []volumeDir {
	var out []volumeDir
	for _, d := range dirs {
		if err := CheckVolumeDir(d); err != nil {
			log.Warn("a volume directory of the pod's annotation is left out", "err", err)
			continue
		}
		out = append(out, volumeDir{d, false})
	}
	return out
}

// CheckVolumeDir says why a host directory cannot be an entry of a vz
// VM's volume share (nil: it can): it must be an absolute, clean path
// of an existing directory that is not itself a symlink.
func CheckVolumeDir(p string) error {
	if !filepath.IsAbs(p) || filepath.Clean(p) != p {
		return fmt.Errorf("volume directory %q must be an absolute, clean path: %w", p, errdefs.ErrInvalidArgument)
	}
	fi, err := os.Lstat(p)
	if err != nil {
		return fmt.Errorf("volume directory %q: %v: %w", p, err, errdefs.ErrInvalidArgument)
	}
	if !fi.IsDir() {
		return fmt.Errorf("volume directory %q is not a directory (a symlink must be given as its target): %w", p, errdefs.ErrInvalidArgument)
	}
	return nil
}

// volumeShareDirs names the directories as the share's entries, "0",
// "1", ... in order (a directory listed twice is one entry, the
// first), then images, the image-volume directory, read-only.
func volumeShareDirs(dirs []volumeDir, images string) []vm.ShareDir {
	seen := map[string]bool{}
	var out []vm.ShareDir
	for _, d := range dirs {
		if seen[d.path] {
			continue
		}
		seen[d.path] = true
		out = append(out, vm.ShareDir{Name: strconv.Itoa(len(out)), HostPath: d.path, ReadOnly: d.ro})
	}
	return append(out, vm.ShareDir{Name: imageVolumeEntry, HostPath: images, ReadOnly: true})
}

// volumeShareOn says whether the sandboxes' VMs get the volume share:
// on vz, when the host has no bind mounts (macOS).
func (s *Controller) volumeShareOn() bool { return !s.hostBinds && s.cfg.Backend == "vz" }

// hasVolumeShare says whether the VM of a sandbox of spec boots with the
// volume share: not the node VM, whose kubelet's volumes are below its
// own shares.
func (s *Controller) hasVolumeShare(spec store.SandboxSpec) bool {
	return s.volumeShareOn() && len(spec.NodeShares) == 0
}

// moreShareMounts are the shares the agent mounts at boot besides the
// shared directories: the node VM's own, or the volume share.
func (s *Controller) moreShareMounts(spec store.SandboxSpec, guestOS string) []shareMount {
	if s.hasVolumeShare(spec) {
		return []shareMount{{volumeTag, guestVolumeDirFor(guestOS), false}}
	}
	return nodeShareMounts(spec, guestOS)
}

// volumeShare is the volume share a sandbox's VM boots with. With nil
// spec it is only its shape (a warm-start key's).
func (s *Controller) volumeShare(sbID, sbDir string, spec *store.SandboxSpec) (vm.Share, error) {
	images := filepath.Join(sbDir, imageVolumeDir)
	if spec == nil {
		return vm.Share{Tag: volumeTag, Dirs: volumeShareDirs(nil, images)}, nil
	}
	if err := os.MkdirAll(images, 0o700); err != nil {
		return vm.Share{}, err
	}
	log := sbLog(sbID)
	dirs := append(podVolumeDirs(log, s.cfg.VolumeRoots, spec.UID), extraVolumeDirs(log, spec.VolumeDirs)...)
	sh := vm.Share{Tag: volumeTag, Dirs: volumeShareDirs(dirs, images)}
	log.Info("volume directories shared with the VM", "entries", len(dirs))
	for _, d := range sh.Dirs {
		log.Debug("volume share entry", "name", d.Name, "hostPath", d.HostPath, "ro", d.ReadOnly)
	}
	return sh, nil
}

// resolveVolume finds the entry of dirs that holds hostPath (the deepest
// one, when entries nest) and hostPath's place in it ("." for the entry
// itself). The comparison is by path elements (/a/b does not hold
// /a/bc), and a host path that is not absolute and clean ("..") is in
// none.
func resolveVolume(dirs []vm.ShareDir, hostPath string) (entry, rel string, ok bool) {
	if !filepath.IsAbs(hostPath) || filepath.Clean(hostPath) != hostPath {
		return "", "", false
	}
	best := -1
	for i, d := range dirs {
		r, err := filepath.Rel(d.HostPath, hostPath)
		if err != nil || !filepath.IsLocal(r) {
			continue
		}
		if best < 0 || len(d.HostPath) > len(dirs[best].HostPath) {
			best, rel = i, r
		}
	}
	if best < 0 {
		return "", "", false
	}
	return dirs[best].Name, rel, true
}

// volumeRule is how BindVolumes treats one volume of a vz guest.
type volumeRule int

const (
	volumeRequired   volumeRule = iota // linked; a failure fails the container
	volumeBestEffort                   // linked if the guest takes it; skipped (logged) if not
	volumeSkipped                      // left out (logged)
)

// volumeRuleFor is the rule for a volume at guestPath of a guest of the
// OS (resolved: its host path is below an entry of the volume share;
// termLog: it is kubelet's termination-log file), and why it is not
// required. kubelet mounts files at system paths in every container: a
// macOS guest's /dev is devfs and its /etc/hosts a file of its own;
// kubelet's hosts file lies directly in the pod's directory, which is
// never shared, and its termination-log files are not shared either.
func volumeRuleFor(guestOS, guestPath string, resolved, termLog bool) (volumeRule, string) {
	if termLog {
		return volumeSkipped, "kubelet reads a termination-log file back on the host, so a vz VM does not get its directory (the guest could swap the file for a symlink kubelet would follow): the termination message comes from the log with terminationMessagePolicy FallbackToLogsOnError, else is empty"
	}
	clean := path.Clean(guestPath)
	if guestOS == "darwin" {
		switch {
		case clean == "/dev" || strings.HasPrefix(clean, "/dev/"):
			why := "a macOS guest's /dev is devfs; the link is made if devfs takes it, else the termination message comes from the log (terminationMessagePolicy FallbackToLogsOnError) or is empty"
			if !resolved {
				return volumeSkipped, why
			}
			return volumeBestEffort, why
		case clean == "/etc/hosts" || clean == "/private/etc/hosts":
			return volumeSkipped, "/etc/hosts is the macOS guest's own file, which the agent does not replace: the VM keeps its own"
		}
	}
	if clean == "/etc/hosts" && !resolved {
		return volumeSkipped, "kubelet's hosts file lies in the pod's directory, which is never shared with a vz VM: the VM keeps its own /etc/hosts"
	}
	return volumeRequired, ""
}

// bootVolumeDirs are the entries of the volume share the sandbox's VM
// booted with (its spec.json).
func bootVolumeDirs(sbDir string) ([]vm.ShareDir, error) {
	b, err := os.ReadFile(filepath.Join(sbDir, shim.SpecFile))
	if err != nil {
		return nil, fmt.Errorf("reading the VM's spec: %w", err)
	}
	var spec vm.Spec
	if err := json.Unmarshal(b, &spec); err != nil {
		return nil, fmt.Errorf("parsing the VM's spec: %w", err)
	}
	for _, sh := range spec.Shares {
		if sh.Tag == volumeTag {
			return sh.Dirs, nil
		}
	}
	return nil, nil
}

// linkVolumes makes each volume of a container visible in a vz guest:
// a subpath of the volume share, at the container path (a symlink in a
// macOS guest, a bind in a Linux one). An image volume is first cloned
// into the share's image-volume entry.
func (s *Controller) linkVolumes(ctx context.Context, sb store.Sandbox, a agentapi.AgentClient, cid string, vols []Volume) error {
	dirs, err := bootVolumeDirs(sb.Dir)
	if err != nil {
		return err
	}
	log := sbLog(sb.ID)
	uid := store.SpecOf(sb).UID
	for i, v := range vols {
		if v.Image {
			clone, err := cloneImageVolume(ctx, sb.Dir, cid, i, v.HostPath)
			if err != nil {
				return fmt.Errorf("image volume %s → %s: %w", v.HostPath, v.GuestPath, err)
			}
			v.HostPath, v.ReadOnly = clone, true
		}
		entry, rel, ok := resolveVolume(dirs, v.HostPath)
		rule, why := volumeRuleFor(sb.VMOS, v.GuestPath, ok, terminationLog(s.cfg.VolumeRoots, uid, v.HostPath))
		if rule == volumeSkipped {
			log.Info("volume skipped", "hostPath", v.HostPath, "target", v.GuestPath, "why", why)
			continue
		}
		if !ok {
			return fmt.Errorf("volume %s → %s: a vz VM's shares are fixed when it boots, and this host path is below none of the directories shared with it (the pod's own volume directories below [vz] volume_roots and the directories of the pod annotation %s): %w",
				v.HostPath, v.GuestPath, AnnotationVolumeDirs, errdefs.ErrFailedPrecondition)
		}
		_, err := a.MountShare(ctx, &agentapi.MountShareRequest{
			Tag: volumeTag, Subpath: path.Join(entry, filepath.ToSlash(rel)), Target: v.GuestPath,
			ReadOnly: v.ReadOnly, CreateTarget: true,
		})
		if err != nil && rule == volumeBestEffort {
			log.Info("volume skipped: the guest did not take it", "hostPath", v.HostPath, "target", v.GuestPath, "why", why, "err", err)
			continue
		}
		if err != nil {
			return fmt.Errorf("volume %s → %s in the guest: %w", v.HostPath, v.GuestPath, err)
		}
	}
	return nil
}

// cloneImageVolume clones an image volume's host path (a directory or
// file of an image tree: read-only, macvz's own) into the sandbox's
// image-volume directory as <container>-<index> and returns the clone. A
// clone a previous start of the container made is used again (the tree
// does not change).
func cloneImageVolume(ctx context.Context, sbDir, cid string, i int, src string) (string, error) {
	if !validID(cid) {
		return "", fmt.Errorf("container id %q cannot name a file: %w", cid, errdefs.ErrInvalidArgument)
	}
	dst := filepath.Join(sbDir, imageVolumeDir, cid+"-"+strconv.Itoa(i))
	if _, err := os.Lstat(dst); err == nil {
		return dst, nil
	}
	if err := snapshotter.CloneTree(ctx, src, dst); err != nil {
		return "", fmt.Errorf("cloning the image's tree into the VM's volume share: %w", err)
	}
	return dst, nil
}

// AnnotationVolumeDirs is the pod annotation that lists more host
// directories (a JSON array of absolute paths) for a vz VM's volume
// share, for volumes outside kubelet's pod directories (crictl's).
const AnnotationVolumeDirs = "macvz.io/volume-dirs"

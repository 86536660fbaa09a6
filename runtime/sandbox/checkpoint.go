package sandbox

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"syscall"
	"time"

	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"

	"github.com/macvz/macvz/runtime/agentapi"
	"github.com/macvz/macvz/runtime/shim"
	"github.com/macvz/macvz/runtime/store"
	"github.com/macvz/macvz/runtime/vm"
	"github.com/macvz/macvz/snapshotter"
	"github.com/macvz/macvz/vmimage/imagestore"
)

// Checkpoints (CRI CheckpointPod and RestorePod): a pod is one VM, so its
// checkpoint is the VM's: its memory state, saved as for a warm start
// (warm.go), and clones of its disk files, taken while it is paused, with
// a manifest that says what they are bound to. A restored sandbox's VM
// resumes from them at its first StartContainer, as a warm-started one
// does from a saved state, and gets its own identity (MAC, addresses,
// hostname) from the same guest setup (setupGuest).
//
// The containers' processes are stopped (SIGSTOP, process groups
// included) before the VM is paused and continued once it runs again, so
// the state holds them stopped: a restored container does not run before
// its StartContainer continues it (the CRI's "created, without having
// executed the restored process").

// CheckpointVersion is the manifest's format; a checkpoint of another
// version is refused.
const CheckpointVersion = 1

// The files of a checkpoint directory.
const (
	CheckpointManifestFile = "checkpoint.json"
	checkpointStateFile    = "state"
	checkpointDiskDir      = "disk"
	// checkpointManifestMax bounds what is read of a manifest: it is
	// input, maybe tampered with.
	checkpointManifestMax = 1 << 20
)

// CheckpointManifest describes a checkpoint and what it is bound to.
type CheckpointManifest struct {
	Version int `json:"version"`
	// Backend, HostOS, HostArch and HostRelease (the macOS version on
	// vz) are where the state was saved: a VM state restores only there.
	Backend     string `json:"backend"`
	HostOS      string `json:"hostOS"`
	HostArch    string `json:"hostArch"`
	HostRelease string `json:"hostRelease,omitempty"`
	// Key is the VM's shape (as a warm-start key: layout, backend, image
	// content, size, devices): the restored VM must have the same.
	Key string `json:"key"`
	// Image is the VM image's reference, ImageID its ID and Manifest its
	// manifest digest: the image must still be on the node.
	Image    string        `json:"image"`
	ImageID  string        `json:"imageId"`
	Manifest digest.Digest `json:"manifest"`
	Content  string        `json:"content"`
	GuestOS  string        `json:"guestOS"`
	CPUs     int           `json:"cpus"`
	Memory   int64         `json:"memoryBytes"`
	// MAC is the NIC's address when saved (a restored guest still has
	// it); MachineID a macOS guest's identifier.
	MAC       string `json:"mac,omitempty"`
	MachineID []byte `json:"machineId,omitempty"`
	// Sandbox is the checkpointed pod's record (name, CRI config, spec),
	// for reference: RestorePod brings the new pod's config.
	Sandbox    CheckpointSandbox     `json:"sandbox"`
	Containers []CheckpointContainer `json:"containers"`
	State      CheckpointFile        `json:"state"`
	Disks      []CheckpointFile      `json:"disks,omitempty"`
	Created    time.Time             `json:"created"`
}

// CheckpointSandbox is the checkpointed sandbox.
type CheckpointSandbox struct {
	ID      string            `json:"id"`
	Name    string            `json:"name"`
	Handler string            `json:"handler,omitempty"`
	Config  []byte            `json:"config"` // runtimeapi.PodSandboxConfig, protobuf
	Spec    store.SandboxSpec `json:"spec"`
}

// CheckpointContainer is one container of a checkpoint: its process runs
// in the VM state under ID (the guest's name for it).
type CheckpointContainer struct {
	ID       string `json:"id"`
	Name     string `json:"name"`
	Config   []byte `json:"config"` // runtimeapi.ContainerConfig, protobuf
	ImageRef string `json:"imageRef"`
	ImageID  string `json:"imageId"`
	IsVM     bool   `json:"isVm,omitempty"`
}

// CheckpointFile is a file of the checkpoint directory.
type CheckpointFile struct {
	Name   string `json:"name"`
	Size   int64  `json:"size"`
	SHA256 string `json:"sha256,omitempty"`
}

// hostOS and hostArch are this host's, as the manifest records them
// (variables for tests).
var hostOS, hostArch = runtime.GOOS, runtime.GOARCH

// undoTimeout bounds what a checkpoint does after a failure or its
// deadline: resuming the VM and its processes.
const undoTimeout = 30 * time.Second

// Checkpoint writes a checkpoint of a sandbox's VM into out, an existing
// empty directory: its containers' processes are stopped, the VM is
// paused, its state saved and its disk files cloned, then the VM resumes
// and the processes continue, whatever happened (an error, ctx's
// deadline). ctrs are the sandbox's running containers. On failure every
// file it made in out is removed. The caller holds the sandbox lock.
func (s *Controller) Checkpoint(ctx context.Context, sb store.Sandbox, img *imagestore.VMImage, ctrs []store.Container, out string) (retErr error) {
	log := sbLog(sb.ID)
	start := time.Now()
	switch {
	case sb.Node:
		return fmt.Errorf("the node VM cannot be checkpointed: %w", errdefs.ErrFailedPrecondition)
	case sb.State != store.SandboxReady || !sb.VMStarted:
		return fmt.Errorf("sandbox %s has no running VM to checkpoint: %w", sb.ID, errdefs.ErrFailedPrecondition)
	case store.SpecOf(sb).NoAgent:
		return fmt.Errorf("sandbox %s runs without the macvz agent, which a checkpoint needs to stop and continue its processes: %w", sb.ID, errdefs.ErrFailedPrecondition)
	case len(store.SpecOf(sb).VolumeDirs) > 0:
		return fmt.Errorf("sandbox %s has a volume share (macvz.io/volume-dirs), which a checkpoint cannot carry: %w", sb.ID, errdefs.ErrFailedPrecondition)
	}
	if filepath.IsAbs(out) {
		out = filepath.Clean(out)
	}
	root, err := openEmptyDir(out)
	if err != nil {
		return err
	}
	defer root.Close()
	var spec vm.Spec
	b, err := os.ReadFile(filepath.Join(sb.Dir, shim.SpecFile))
	if err == nil {
		err = json.Unmarshal(b, &spec)
	}
	if err != nil {
		return fmt.Errorf("reading the VM's spec of sandbox %s: %w", sb.ID, err)
	}
	if len(spec.Shares) > 2 {
		// Node shares, a volume share: nothing a restored VM gets back.
		return fmt.Errorf("sandbox %s's VM has shares a checkpoint cannot carry: %w", sb.ID, errdefs.ErrFailedPrecondition)
	}
	c, err := s.Shim(ctx, sb)
	if err != nil {
		return err
	}
	// Files made in out, removed again on failure (the directory is the
	// caller's: it stays).
	var made []string
	saved := false
	defer func() {
		if retErr != nil {
			log.Warn("checkpoint failed; the VM and its processes run on", "dir", out, "saved", saved, "err", retErr)
			for _, f := range slices.Backward(made) {
				if err := root.Remove(f); err != nil && !errors.Is(err, fs.ErrNotExist) {
					log.Warn("removing a file of a failed checkpoint", "file", f, "err", err)
				}
			}
		}
	}()

	a := c.Agent()
	// Stop the processes first, so the state holds them stopped; they
	// continue in the running VM whatever happens below.
	var stopped []string
	defer func() {
		uctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), undoTimeout)
		defer cancel()
		for _, id := range stopped {
			if _, err := a.KillAll(uctx, &agentapi.KillAllRequest{ContainerId: id, Signal: uint32(syscall.SIGCONT)}); err != nil {
				log.Error("continuing a container's processes after a checkpoint", "container", id, "err", err)
				retErr = errors.Join(retErr, fmt.Errorf("continuing container %s after the checkpoint: %w", id, err))
			}
		}
	}()
	for _, ctr := range ctrs {
		if ctr.IsVM {
			continue
		}
		if _, err := a.KillAll(ctx, &agentapi.KillAllRequest{ContainerId: ctr.ID, Signal: uint32(syscall.SIGSTOP)}); err != nil {
			return fmt.Errorf("stopping container %s's processes for the checkpoint: %w", ctr.ID, err)
		}
		stopped = append(stopped, ctr.ID)
	}
	// QEMU refuses to migrate while the guest has a 9p share mounted:
	// the shares are unmounted around the save and given again after
	// (lazily: a share no container binds was never mounted, and its
	// unmount only makes the agent forget it).
	var unmounted []shareMount
	defer func() {
		if len(unmounted) == 0 {
			return
		}
		uctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), undoTimeout)
		defer cancel()
		if err := s.mountShares(uctx, a, unmounted, true); err != nil {
			log.Error("mounting the shares again after a checkpoint", "err", err)
			retErr = errors.Join(retErr, err)
		}
	}()
	if shareFstype(s.cfg.Backend) == "9p" {
		for _, sh := range s.shareMounts(store.SpecOf(sb), sb.VMOS) {
			if _, err := a.UnmountShare(ctx, &agentapi.UnmountShareRequest{Tag: sh.tag}); err != nil {
				if errdefs.IsFailedPrecondition(err) {
					return fmt.Errorf("QEMU cannot save a VM whose guest uses a 9p share, and %v; a pod with volumes cannot be checkpointed on QEMU: %w", err, errdefs.ErrFailedPrecondition)
				}
				return fmt.Errorf("unmounting the guest's shares for the checkpoint: %w", err)
			}
			unmounted = append(unmounted, sh)
		}
	}

	// The VM is paused from the save until Resume: always resumed, with a
	// context of its own when ctx is done. The save itself runs past
	// ctx's deadline (by saveGrace at most) rather than be abandoned: a
	// Resume sent while the shim still saves could come before the save
	// ends, and leave the VM paused.
	//
	// The shim (root) writes the state into the sandbox's own directory,
	// never into the caller's, where a name could have been made a
	// symlink since it was found empty; it is moved there after.
	saveDir, err := os.MkdirTemp(sb.Dir, "checkpoint-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(saveDir)
	sctx, scancel := saveContext(ctx)
	saveErr := c.Save(sctx, filepath.Join(saveDir, checkpointStateFile))
	scancel()
	saved = saveErr == nil
	var disks []CheckpointFile
	var diskErr error
	if saveErr == nil {
		disks, diskErr = s.cloneCheckpointDisks(ctx, sb, img, root, out, &made)
	}
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), undoTimeout)
	resumeErr := c.Resume(rctx)
	cancel()
	paused := time.Since(start)
	if resumeErr != nil {
		log.Error("the VM did not resume after its checkpoint", "err", resumeErr)
		return fmt.Errorf("resuming the VM after the checkpoint: %w", resumeErr)
	}
	if saveErr != nil {
		return fmt.Errorf("saving the VM's state: %w", saveErr)
	}
	if diskErr != nil {
		return diskErr
	}
	made = append(made, checkpointStateFile)
	if err := moveInto(filepath.Join(saveDir, checkpointStateFile), out, checkpointStateFile); err != nil {
		return fmt.Errorf("moving the VM's state into %s: %w", out, err)
	}
	st, err := hashFile(root, checkpointStateFile)
	if err != nil {
		return err
	}
	m := CheckpointManifest{
		Version: CheckpointVersion, Backend: s.cfg.Backend, HostOS: hostOS, HostArch: hostArch, HostRelease: hostRelease(s.cfg.Backend),
		Key:   warmKey(s.cfg.Backend, img.Content, &spec, 0),
		Image: img.Image.Name, ImageID: img.Image.ID(), Manifest: img.Image.Manifest.Digest, Content: img.Content,
		GuestOS: img.Descriptor.OS, CPUs: spec.CPUs, Memory: spec.MemoryBytes,
		Sandbox: CheckpointSandbox{ID: sb.ID, Name: sb.Name, Handler: sb.Handler, Config: sb.Config, Spec: store.SpecOf(sb)},
		State:   st, Disks: disks, Created: time.Now().UTC(),
	}
	if len(spec.NICs) > 0 {
		m.MAC = spec.NICs[0].MAC
	}
	if spec.Boot.Kind == vm.BootMacOS {
		m.MachineID = spec.Boot.MachineID
		if len(m.MachineID) == 0 && spec.Boot.MachineIDFile != "" {
			m.MachineID, _ = os.ReadFile(spec.Boot.MachineIDFile)
		}
	}
	for _, ctr := range ctrs {
		m.Containers = append(m.Containers, CheckpointContainer{ID: ctr.ID, Name: ctr.Name, Config: ctr.Config, ImageRef: ctr.ImageRef, ImageID: ctr.ImageID, IsVM: ctr.IsVM})
	}
	mb, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return err
	}
	// The manifest last, whole: a directory without it is no checkpoint.
	made = append(made, CheckpointManifestFile+".tmp", CheckpointManifestFile)
	if err := writeRootFile(root, CheckpointManifestFile+".tmp", mb); err != nil {
		return err
	}
	if err := root.Rename(CheckpointManifestFile+".tmp", CheckpointManifestFile); err != nil {
		return err
	}
	// The caller's deadline, checked once, after the last write: a
	// caller that gave up during the save or while the state was moved,
	// hashed and described (tens of milliseconds for a large state) must
	// not find a whole checkpoint it was told failed. Only the answer's
	// way back comes after this check.
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("checkpointing sandbox %s: %w", sb.ID, err)
	}
	log.Info("sandbox checkpointed", "dir", out, "containers", len(ctrs), "stateMiB", st.Size>>20,
		"paused", paused.Round(time.Millisecond), "took", time.Since(start).Round(time.Millisecond))
	return nil
}

// moveInto moves the file src to dir/name: a rename (which replaces a
// symlink at name rather than follow it), else, across file systems, a
// clone into a new file.
func moveInto(src, dir, name string) error {
	dst := filepath.Join(dir, name)
	err := os.Rename(src, dst)
	if !errors.Is(err, syscall.EXDEV) {
		return err
	}
	_, err = snapshotter.CloneFile(src, dst)
	return err
}

// saveGrace is how long a VM's save may run past the deadline of the
// checkpoint asking for it.
const saveGrace = 10 * time.Second

// saveContext is the context of a checkpoint's save: not cancelled with
// ctx, and with ctx's deadline plus saveGrace.
func saveContext(ctx context.Context) (context.Context, context.CancelFunc) {
	dl, ok := ctx.Deadline()
	if !ok {
		return context.WithCancel(context.WithoutCancel(ctx))
	}
	return context.WithDeadline(context.WithoutCancel(ctx), dl.Add(saveGrace))
}

// cloneCheckpointDisks clones the VM's disk files (the image's disk and
// NVRAM, as the sandbox's clone has them) into out/disk while the VM is
// paused. made collects what it created.
func (s *Controller) cloneCheckpointDisks(ctx context.Context, sb store.Sandbox, img *imagestore.VMImage, root *os.Root, out string, made *[]string) ([]CheckpointFile, error) {
	names := diskFiles(img)
	if len(names) == 0 {
		return nil, nil
	}
	if sb.Disk == "" {
		return nil, fmt.Errorf("sandbox %s has no disk clone: %w", sb.ID, errdefs.ErrFailedPrecondition)
	}
	ms, err := s.sn.Mounts(ctx, sb.Disk)
	if err != nil {
		return nil, fmt.Errorf("the sandbox's disk clone: %w", err)
	}
	src, err := snapshotter.Dir(ms)
	if err != nil {
		return nil, err
	}
	*made = append(*made, checkpointDiskDir)
	if err := root.Mkdir(checkpointDiskDir, 0o700); err != nil {
		return nil, err
	}
	var files []CheckpointFile
	for _, n := range names {
		rel := filepath.Join(checkpointDiskDir, n)
		*made = append(*made, rel) // removed before the directory
		if _, err := snapshotter.CloneFile(filepath.Join(src, n), filepath.Join(out, rel)); err != nil {
			return nil, fmt.Errorf("cloning the VM's disk file %s: %w", n, err)
		}
		fi, err := root.Lstat(rel)
		if err != nil {
			return nil, err
		}
		files = append(files, CheckpointFile{Name: n, Size: fi.Size()})
	}
	return files, nil
}

// diskFiles are the names of an image's disk files in a sandbox's clone.
func diskFiles(img *imagestore.VMImage) []string {
	var out []string
	if d := img.Descriptor.Disk; d != "" {
		out = append(out, d)
		if n := img.Descriptor.NVRAM; n != "" {
			out = append(out, n)
		}
	}
	return out
}

// openEmptyDir opens out, which must be an absolute path to an existing
// empty directory (not a symlink): macvz never writes into a directory
// that has something in it.
func openEmptyDir(out string) (*os.Root, error) {
	if !filepath.IsAbs(out) {
		return nil, fmt.Errorf("checkpoint directory %q is not an absolute path: %w", out, errdefs.ErrInvalidArgument)
	}
	fi, err := os.Lstat(out)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("checkpoint directory %s does not exist (create it, empty): %w", out, errdefs.ErrNotFound)
	}
	if err != nil {
		return nil, err
	}
	if !fi.IsDir() {
		return nil, fmt.Errorf("checkpoint directory %s is not a directory (a symlink is not followed): %w", out, errdefs.ErrInvalidArgument)
	}
	root, err := os.OpenRoot(out)
	if err != nil {
		return nil, err
	}
	f, err := root.Open(".")
	if err == nil {
		var names []string
		names, err = f.Readdirnames(1)
		f.Close()
		if err == io.EOF {
			return root, nil
		}
		if err == nil {
			err = fmt.Errorf("checkpoint directory %s is not empty (it has %s): macvz writes a checkpoint only into an empty directory: %w", out, names[0], errdefs.ErrFailedPrecondition)
		}
	}
	root.Close()
	return nil, err
}

func writeRootFile(root *os.Root, name string, b []byte) error {
	f, err := root.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	if _, err := f.Write(b); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// hashFile is a regular file's size and SHA-256 (never through a symlink).
func hashFile(root *os.Root, name string) (CheckpointFile, error) {
	fi, err := root.Lstat(name)
	if err != nil {
		return CheckpointFile{}, err
	}
	if !fi.Mode().IsRegular() {
		return CheckpointFile{}, fmt.Errorf("%s is not a regular file: %w", name, errdefs.ErrInvalidArgument)
	}
	f, err := root.Open(name)
	if err != nil {
		return CheckpointFile{}, err
	}
	defer f.Close()
	h := sha256.New()
	n, err := io.Copy(h, f)
	if err != nil {
		return CheckpointFile{}, err
	}
	return CheckpointFile{Name: name, Size: n, SHA256: hex.EncodeToString(h.Sum(nil))}, nil
}

// mountShares gives the guest its shares. Lazy ones (a pod's boot, a
// checkpoint's) the guest mounts, and loads the file system for, only
// when a container first binds a path of one: a pod without volumes
// never does. A pooled VM mounts them at once, ahead of its pod.
func (s *Controller) mountShares(ctx context.Context, a agentapi.AgentClient, shs []shareMount, lazy bool) error {
	for _, sh := range shs {
		if _, err := a.MountShare(ctx, &agentapi.MountShareRequest{
			Tag: sh.tag, Fstype: shareFstype(s.cfg.Backend), Target: sh.target, CreateTarget: true, ReadOnly: sh.ro,
			Lazy: lazy,
		}); err != nil {
			return fmt.Errorf("mounting the shared directory %s in the guest: %w", sh.tag, err)
		}
	}
	return nil
}

// shareMounts are the shares setupGuest mounts in a sandbox's guest.
func (s *Controller) shareMounts(spec store.SandboxSpec, guestOS string) []shareMount {
	return append([]shareMount{
		{sharedTag, guestSharedDirFor(guestOS), false},
		{sharedROTag, guestSharedDirFor(guestOS) + "-ro", true},
	}, s.moreShareMounts(spec, guestOS)...)
}

// Checkpoint is a checkpoint directory read and checked by
// ReadCheckpoint.
type Checkpoint struct {
	Dir      string
	Manifest CheckpointManifest
}

// safeName is a file name a manifest may give: one plain path element.
var safeName = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$`)

// ReadCheckpoint reads and checks a checkpoint directory: its manifest
// (version, well-formed, files named inside the directory, present as
// regular files of the recorded sizes) and what it is bound to (this
// backend, host and macOS version: FailedPrecondition otherwise). It
// reads only inside dir and follows no symlink there.
func (s *Controller) ReadCheckpoint(dir string) (*Checkpoint, error) {
	if dir == "" || !filepath.IsAbs(dir) {
		return nil, fmt.Errorf("checkpoint path %q is not absolute: %w", dir, errdefs.ErrInvalidArgument)
	}
	dir = filepath.Clean(dir)
	fi, err := os.Lstat(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("checkpoint directory %s does not exist: %w", dir, errdefs.ErrNotFound)
	}
	if err != nil {
		return nil, err
	}
	if !fi.IsDir() {
		return nil, fmt.Errorf("checkpoint path %s is not a directory (a symlink is not followed): %w", dir, errdefs.ErrInvalidArgument)
	}
	root, err := os.OpenRoot(dir)
	if err != nil {
		return nil, err
	}
	defer root.Close()
	mfi, err := root.Lstat(CheckpointManifestFile)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("%s has no %s: it is not a macvz checkpoint, or an unfinished one: %w", dir, CheckpointManifestFile, errdefs.ErrInvalidArgument)
	}
	if err != nil {
		return nil, err
	}
	if !mfi.Mode().IsRegular() || mfi.Size() > checkpointManifestMax {
		return nil, fmt.Errorf("%s in %s is not a regular file of at most %d bytes: %w", CheckpointManifestFile, dir, checkpointManifestMax, errdefs.ErrInvalidArgument)
	}
	f, err := root.Open(CheckpointManifestFile)
	if err != nil {
		return nil, err
	}
	b, err := io.ReadAll(io.LimitReader(f, checkpointManifestMax+1))
	f.Close()
	if err != nil {
		return nil, err
	}
	var m CheckpointManifest
	if err := json.Unmarshal(b, &m); err != nil {
		return nil, fmt.Errorf("the manifest of checkpoint %s: %v: %w", dir, err, errdefs.ErrInvalidArgument)
	}
	if err := s.checkManifest(&m); err != nil {
		return nil, fmt.Errorf("checkpoint %s: %w", dir, err)
	}
	for _, cf := range append([]CheckpointFile{m.State}, m.Disks...) {
		name := cf.Name
		if cf.Name != checkpointStateFile {
			name = filepath.Join(checkpointDiskDir, cf.Name)
		}
		fi, err := root.Lstat(name)
		if errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("checkpoint %s has no %s: %w", dir, name, errdefs.ErrInvalidArgument)
		}
		if err != nil {
			return nil, err
		}
		if !fi.Mode().IsRegular() || fi.Size() != cf.Size {
			return nil, fmt.Errorf("checkpoint %s: %s is not a regular file of %d bytes: %w", dir, name, cf.Size, errdefs.ErrInvalidArgument)
		}
	}
	return &Checkpoint{Dir: dir, Manifest: m}, nil
}

// checkManifest checks a manifest's form and what it is bound to.
func (s *Controller) checkManifest(m *CheckpointManifest) error {
	bad := func(f string, a ...any) error {
		return fmt.Errorf("the manifest is invalid: %s: %w", fmt.Sprintf(f, a...), errdefs.ErrInvalidArgument)
	}
	if m.Version != CheckpointVersion {
		return fmt.Errorf("its format is version %d; this macvz reads version %d: %w", m.Version, CheckpointVersion, errdefs.ErrFailedPrecondition)
	}
	if m.Backend != s.cfg.Backend {
		return fmt.Errorf("it was made by the %q backend; this daemon runs %q: %w", m.Backend, s.cfg.Backend, errdefs.ErrFailedPrecondition)
	}
	if m.HostOS != hostOS || m.HostArch != hostArch {
		return fmt.Errorf("it was made on %s/%s; this host is %s/%s: %w", m.HostOS, m.HostArch, hostOS, hostArch, errdefs.ErrFailedPrecondition)
	}
	if r := hostRelease(s.cfg.Backend); m.HostRelease != r {
		return fmt.Errorf("it was made on macOS %q; this host runs %q, whose Virtualization.framework may not read its state: %w", m.HostRelease, r, errdefs.ErrFailedPrecondition)
	}
	if m.State.Name != checkpointStateFile || m.State.Size <= 0 || len(m.State.SHA256) != 64 {
		return bad("state %+v", m.State)
	}
	if _, err := hex.DecodeString(m.State.SHA256); err != nil {
		return bad("state digest %q", m.State.SHA256)
	}
	seen := map[string]bool{}
	for _, d := range m.Disks {
		if !safeName.MatchString(d.Name) || d.Name == checkpointStateFile || seen[d.Name] || d.Size < 0 {
			return bad("disk file %q", d.Name)
		}
		seen[d.Name] = true
	}
	if m.Key == "" || m.CPUs <= 0 || m.Memory <= 0 || m.Manifest.Validate() != nil || m.ImageID == "" {
		return bad("VM %q, %d CPUs, %d bytes, image %q", m.Key, m.CPUs, m.Memory, m.Manifest)
	}
	if m.GuestOS != "linux" && m.GuestOS != "darwin" {
		return bad("guest OS %q", m.GuestOS)
	}
	if len(m.Containers) == 0 {
		return bad("no container")
	}
	ids, names := map[string]bool{}, map[string]bool{}
	for _, c := range m.Containers {
		if !validID(c.ID) || c.Name == "" || ids[c.ID] || names[c.Name] || len(c.Config) == 0 || c.ImageID == "" {
			return bad("container %q (%q)", c.Name, c.ID)
		}
		ids[c.ID], names[c.Name] = true, true
	}
	return nil
}

// validID is a container ID as the store makes them: 64 hex digits.
func validID(id string) bool {
	if len(id) != 64 {
		return false
	}
	_, err := hex.DecodeString(id)
	return err == nil
}

// Restore makes a sandbox from a checkpoint read by ReadCheckpoint, as
// Create does (sb: its ID, name, the new pod's spec and CRI fields),
// with ctrs (the checkpoint's containers under the new pod's configs)
// recorded Created. The checkpoint's state and disk files are cloned into
// the sandbox's directory (the checkpoint is never written); its VM
// resumes from them at the first StartContainer (Boot), with the new
// pod's identity. img is the checkpoint's VM image. Anything made before
// a failure is undone.
func (s *Controller) Restore(ctx context.Context, sb store.Sandbox, cp *Checkpoint, img *imagestore.VMImage, ctrs []store.Container) (store.Sandbox, error) {
	m := &cp.Manifest
	if img.Image.Manifest.Digest != m.Manifest || img.Content != m.Content {
		return sb, fmt.Errorf("the checkpoint's VM image %s (%s) is not the one on this node: %w", m.Image, m.Manifest, errdefs.ErrFailedPrecondition)
	}
	if want := diskFiles(img); len(want) != len(m.Disks) || !slices.EqualFunc(want, m.Disks, func(n string, f CheckpointFile) bool { return n == f.Name }) {
		return sb, fmt.Errorf("the checkpoint's disk files do not match its VM image's: %w", errdefs.ErrInvalidArgument)
	}
	for _, c := range ctrs {
		if _, err := s.st.Container(c.ID); err == nil {
			return sb, fmt.Errorf("container %s of the checkpoint still exists on this node: its process in the VM state is named by its ID, so remove its pod before restoring: %w", c.ID, errdefs.ErrFailedPrecondition)
		}
	}
	dir := filepath.Join(s.Dir(sb.ID), "checkpoint")
	sb.Restore = &store.Restore{Dir: dir, CPUs: m.CPUs, MemoryBytes: m.Memory, MAC: m.MAC, MachineID: m.MachineID}
	for _, d := range m.Disks {
		sb.Restore.Disks = append(sb.Restore.Disks, d.Name)
	}
	return s.create(ctx, sb, nil, func(sb *store.Sandbox) error {
		if err := s.checkRestoreShape(sb, img, m); err != nil {
			return err
		}
		if err := copyCheckpoint(cp, dir); err != nil {
			return err
		}
		for _, c := range ctrs {
			c.SandboxID = sb.ID
			c.State = store.ContainerCreated
			c.Restored = !c.IsVM
			if err := s.st.CreateContainer(&c); err != nil {
				return err
			}
		}
		return nil
	})
}

// checkRestoreShape refuses a restore whose VM would differ from the
// checkpointed one in a way its state depends on (the network
// attachment's NIC, the shares), before anything is copied.
func (s *Controller) checkRestoreShape(sb *store.Sandbox, img *imagestore.VMImage, m *CheckpointManifest) error {
	probe, err := s.vmSpec(sb.ID, sb.Dir, "", img.Descriptor, m.CPUs, m.Memory)
	if err != nil {
		return err
	}
	if sb.Network != nil {
		probe.NICs = []vm.NIC{sb.Network.NIC}
	}
	if s.hasVolumeShare(store.SpecOf(*sb)) {
		return fmt.Errorf("a restored pod cannot have a volume share (macvz.io/volume-dirs): %w", errdefs.ErrFailedPrecondition)
	}
	if warmKey(s.cfg.Backend, img.Content, probe, 0) != m.Key {
		return fmt.Errorf("the restored pod's VM would not be the checkpointed one (its network attachment, the daemon's QEMU settings or the image differ): %w", errdefs.ErrFailedPrecondition)
	}
	return nil
}

// copyCheckpoint clones a checkpoint's state and disk files into dir
// (made here), checking the state's digest on the copy: what is checked
// is what the VM resumes from.
func copyCheckpoint(cp *Checkpoint, dir string) error {
	m := &cp.Manifest
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	root, err := os.OpenRoot(dir)
	if err != nil {
		return err
	}
	defer root.Close()
	src, err := os.OpenRoot(cp.Dir)
	if err != nil {
		return err
	}
	defer src.Close()
	if err := cloneFromRoot(src, checkpointStateFile, filepath.Join(dir, checkpointStateFile), m.State.Size); err != nil {
		return fmt.Errorf("copying the checkpoint's VM state: %w", err)
	}
	st, err := hashFile(root, checkpointStateFile)
	if err != nil {
		return err
	}
	if st.Size != m.State.Size || st.SHA256 != m.State.SHA256 {
		return fmt.Errorf("the checkpoint's VM state does not match its manifest (changed or corrupt): %w", errdefs.ErrInvalidArgument)
	}
	for _, d := range m.Disks {
		dst := filepath.Join(dir, d.Name)
		if err := cloneFromRoot(src, filepath.Join(checkpointDiskDir, d.Name), dst, d.Size); err != nil {
			return fmt.Errorf("copying the checkpoint's disk file %s: %w", d.Name, err)
		}
		fi, err := root.Lstat(d.Name)
		if err != nil {
			return err
		}
		if !fi.Mode().IsRegular() || fi.Size() != d.Size {
			return fmt.Errorf("the checkpoint's disk file %s does not match its manifest: %w", d.Name, errdefs.ErrInvalidArgument)
		}
	}
	return nil
}

// cloneFromRoot clones name, a regular file of size bytes inside root
// (opened there without following a symlink, so a name swapped for one
// since ReadCheckpoint looked cannot lead out), to the new file dst.
func cloneFromRoot(root *os.Root, name, dst string, size int64) error {
	f, err := root.OpenFile(name, os.O_RDONLY|syscall.O_NOFOLLOW, 0)
	if err != nil {
		return fmt.Errorf("%v: %w", err, errdefs.ErrInvalidArgument)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return err
	}
	if !fi.Mode().IsRegular() || fi.Size() != size {
		return fmt.Errorf("%s is not a regular file of %d bytes: %w", name, size, errdefs.ErrInvalidArgument)
	}
	// The open file, by its descriptor's name: what is cloned is what
	// was checked.
	_, err = snapshotter.CloneFile(fdPath(f), dst)
	return err
}

// restoredState is the saved state a restored sandbox's VM resumes from.
func restoredState(r *store.Restore) *warmState {
	return &warmState{dir: r.Dir, meta: warmMeta{MAC: r.MAC, MachineID: r.MachineID}, files: r.Disks}
}

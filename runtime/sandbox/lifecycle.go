package sandbox

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"

	"github.com/macvz/macvz/internal/testpause"
	"github.com/macvz/macvz/runtime/agentapi"
	"github.com/macvz/macvz/runtime/safefs"
	"github.com/macvz/macvz/runtime/store"
	"github.com/macvz/macvz/vmimage/imagestore"
)

// Create records a new sandbox (sb: its ID, name, spec and CRI fields;
// the controller sets its directory and state), makes its state
// directory, attaches its network and, when img is set, boots its VM.
// Anything made before a failure is undone, the record included.
func (s *Controller) Create(ctx context.Context, sb store.Sandbox, img *imagestore.VMImage) (_ store.Sandbox, retErr error) {
	return s.create(ctx, sb, img, nil)
}

// create is Create with prepare, when set, run once the sandbox's
// directory and network exist (Restore: the checkpoint's files and
// containers), undone with the rest on failure.
func (s *Controller) create(ctx context.Context, sb store.Sandbox, img *imagestore.VMImage, prepare func(*store.Sandbox) error) (_ store.Sandbox, retErr error) {
	if sb.Spec == nil {
		return sb, fmt.Errorf("sandbox %s has no spec: %w", sb.ID, errdefs.ErrInvalidArgument)
	}
	sb.Dir = s.Dir(sb.ID)
	// A pooled VM fit for it gives the sandbox its ID, directory and
	// disk clone (pool.go).
	s.claimPooled(&sb, img)
	sb.State = store.SandboxReady
	sb.Creating = true
	if sb.CreatedAt.IsZero() {
		sb.CreatedAt = time.Now()
	}
	unlock := s.Lock(sb.ID)
	defer unlock()
	if err := s.st.CreateSandbox(&sb); err != nil {
		s.forgetPooled(context.WithoutCancel(ctx), sb)
		return sb, err
	}
	defer func() {
		if retErr != nil {
			sbLog(sb.ID).Warn("creating the sandbox failed; undoing", "err", retErr)
			if err := s.Remove(context.WithoutCancel(ctx), sb); err != nil {
				sbLog(sb.ID).Warn("undoing a failed sandbox", "err", err)
			}
		}
	}()
	if err := os.MkdirAll(sb.Dir, 0o700); err != nil {
		return sb, err
	}
	if err := s.setupNetwork(ctx, &sb); err != nil {
		return sb, err
	}
	testpause.Pause(ctx, "runp") // test-only hook, inert unless MACVZ_TEST_PAUSE=runp
	if prepare != nil {
		if err := prepare(&sb); err != nil {
			return sb, err
		}
	}
	if img != nil {
		if err := s.Boot(ctx, &sb, img, nil); err != nil {
			return sb, err
		}
	}
	rec, err := s.st.UpdateSandbox(sb.ID, func(r *store.Sandbox) error { r.Creating = false; return nil })
	if err != nil {
		return sb, err
	}
	return rec, nil
}

// Stop stops a sandbox's VM (its containers with it), ends its hostPort
// proxies and detaches its network, and marks it NotReady. Stopping a
// stopped sandbox is fine. The caller holds the sandbox lock.
func (s *Controller) Stop(ctx context.Context, id string) error {
	s.setStopping(id, true)
	defer s.setStopping(id, false)
	sb, err := s.st.Sandbox(id)
	if err != nil {
		return err
	}
	// A pooled VM it took and never booted in goes now, not at removal.
	s.forgetPooled(ctx, sb)
	if err := s.stopVM(ctx, sb, vmStopGrace, ""); err != nil {
		return fmt.Errorf("sandbox %s: %w", sb.ID, err)
	}
	s.ports.Stop(sb.ID)
	// The VM is gone: its tap and address can go (CNI DEL).
	if err := s.teardownNetwork(ctx, sb); err != nil {
		return fmt.Errorf("sandbox %s: %w", sb.ID, err)
	}
	// Containers that never started cannot start any more.
	wasReady := false
	_, err = s.st.UpdateSandbox(sb.ID, func(r *store.Sandbox) error {
		wasReady = r.State == store.SandboxReady
		r.State = store.SandboxNotReady
		r.VMStarted = false
		return nil
	})
	if err != nil {
		return err
	}
	if wasReady {
		s.stopped(sb.ID, "")
	}
	sbLog(sb.ID).Info("sandbox stopped")
	s.pokePool() // its VM slot is free
	return nil
}

// ShutdownVM stops a sandbox's VM only (a guest shutdown with grace, a
// hard stop after it) and marks the sandbox NotReady for reason; its
// network stays until Stop. The caller holds the sandbox lock.
func (s *Controller) ShutdownVM(ctx context.Context, id string, grace time.Duration, reason string) error {
	s.setStopping(id, true)
	defer s.setStopping(id, false)
	sb, err := s.st.Sandbox(id)
	if err != nil {
		return err
	}
	if err := s.stopVM(ctx, sb, grace, ""); err != nil {
		return err
	}
	wasReady := false
	_, err = s.st.UpdateSandbox(sb.ID, func(r *store.Sandbox) error {
		wasReady = r.State == store.SandboxReady
		r.State = store.SandboxNotReady
		r.VMStarted = false
		r.Reason = reason
		return nil
	})
	if err == nil && wasReady {
		s.stopped(sb.ID, "")
	}
	return err
}

// Remove removes everything a sandbox has, whatever state it is in: the
// shim and VM (killed), volume binds, the disk clone, the state
// directory, the container records and the sandbox record, in that
// order, so a failure part way leaves a record to retry from. The caller
// holds the sandbox lock (Create holds it for its undo).
func (s *Controller) Remove(ctx context.Context, sb store.Sandbox) error {
	s.ports.Stop(sb.ID)
	s.forgetPooled(ctx, sb)
	s.dropShim(sb.ID)
	var errs []error
	if err := s.shimProcs.Kill(ctx, sb.Dir); err != nil {
		errs = append(errs, err)
	}
	if err := s.teardownNetwork(ctx, sb); err != nil {
		errs = append(errs, err)
	}
	if err := removeSandboxFiles(sb.Dir); err != nil {
		errs = append(errs, err)
	}
	if sb.Disk != "" {
		if err := s.sn.Remove(ctx, sb.Disk); err != nil && !errdefs.IsNotFound(err) {
			errs = append(errs, fmt.Errorf("removing the disk clone: %w", err))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("removing sandbox %s: %w", sb.ID, err)
	}
	cs, err := s.st.Containers(func(c *store.Container) bool { return c.SandboxID == sb.ID })
	if err != nil {
		return err
	}
	for _, c := range cs {
		if err := s.st.DeleteContainer(c); err != nil && !errdefs.IsNotFound(err) {
			return err
		}
	}
	if err := s.st.DeleteSandbox(sb); err != nil && !errdefs.IsNotFound(err) {
		return err
	}
	return nil
}

// removeSandboxFiles removes a sandbox's state directory once shared/
// has no mounts left (unmountShared). The removal never crosses a mount
// point: if an unmount was missed, it fails instead of emptying a volume.
func removeSandboxFiles(dir string) error {
	if err := unmountShared(dir); err != nil {
		return err
	}
	for i := 0; ; i++ {
		err := safefs.RemoveAll(dir)
		if errors.Is(err, safefs.ErrMountPoint) {
			return err
		}
		if err == nil || i == 3 {
			return err
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// Volume is a host directory a container sees at GuestPath.
type Volume struct {
	HostPath, GuestPath string
	ReadOnly            bool
	// Image: an image volume, its host path in an image's file tree
	// macvz unpacked (read-only), which a vz VM gets as a clone.
	Image bool
}

// BindVolumes makes each volume of a container visible in the guest at
// its path: a bind of the host path under the sandbox's shared directory
// (host side), then a bind of that in the guest. A vz VM on a host
// without bind mounts takes its volumes from its volume share instead
// (linkVolumes).
func (s *Controller) BindVolumes(ctx context.Context, sb store.Sandbox, a agentapi.AgentClient, cid string, vols []Volume) error {
	spec := store.SpecOf(sb)
	var fromShare []Volume
	for i, v := range vols {
		if tag, sub, ok := nodeShareOf(spec, v.HostPath); ok {
			// The node VM's own share: bound from it in the guest.
			if _, err := a.MountShare(ctx, &agentapi.MountShareRequest{
				Tag: tag, Subpath: sub, Target: v.GuestPath, ReadOnly: v.ReadOnly, CreateTarget: true,
			}); err != nil {
				return fmt.Errorf("volume %s → %s in the node VM: %w", v.HostPath, v.GuestPath, err)
			}
			continue
		}
		if s.volumeShareOn() {
			fromShare = append(fromShare, v)
			continue
		}
		sub := filepath.Join(cid, strconv.Itoa(i))
		if err := bindVolume(sb.Dir, cid, i, v.HostPath, v.ReadOnly); err != nil {
			return fmt.Errorf("volume %s → %s: %w", v.HostPath, v.GuestPath, err)
		}
		tag := sharedTag
		if v.ReadOnly {
			tag = sharedROTag
		}
		_, err := a.MountShare(ctx, &agentapi.MountShareRequest{
			Tag: tag, Subpath: sub, Target: v.GuestPath,
			ReadOnly: v.ReadOnly, CreateTarget: true,
		})
		if err != nil {
			return fmt.Errorf("volume %s → %s in the guest: %w", v.HostPath, v.GuestPath, err)
		}
	}
	if len(fromShare) > 0 {
		return s.linkVolumes(ctx, sb, a, cid, fromShare)
	}
	return nil
}

// UnbindVolumes removes the host binds of a container's volumes.
func (s *Controller) UnbindVolumes(sb store.Sandbox, cid string) error {
	if err := unmountUnder(sb.Dir, filepath.Join(sharedDir, cid)); err != nil {
		return err
	}
	return unmountUnder(sb.Dir, filepath.Join(sharedRODir, cid))
}

// ForgetImage drops the saved VM states of an image (its manifest) that
// is about to be removed: their disks are children of its base.
func (s *Controller) ForgetImage(ctx context.Context, manifest digest.Digest) {
	s.dropPooledImage(ctx, manifest)
	if s.warm != nil {
		s.warm.dropImage(ctx, manifest)
	}
}

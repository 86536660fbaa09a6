package sandbox

import (
	"context"
	"fmt"
	"log/slog"

	"github.com/containerd/errdefs"

	"github.com/macvz/macvz/runtime/shim"
	"github.com/macvz/macvz/runtime/shimapi"
	"github.com/macvz/macvz/runtime/store"
)

// reconcile runs once at daemon start: it re-attaches to the shim of
// every sandbox whose VM runs, and settles the rest. A sandbox whose shim
// is gone becomes NotReady with its containers Exited and a reason; a VM
// that was still booting when the previous daemon died (its container
// never started) is killed and its clone removed, so StartContainer can
// boot it again.
func (s *Controller) reconcile(ctx context.Context) {
	sbs, err := s.st.Sandboxes(nil)
	if err != nil {
		slog.Warn("listing sandboxes at start", "err", err)
		return
	}
	for _, sb := range sbs {
		log := sbLog(sb.ID)
		switch {
		case sb.Creating:
			log.Warn("RunPodSandbox was interrupted by the daemon's end; removing the half-made sandbox")
			if err := s.Remove(ctx, sb); err != nil {
				log.Warn("removing a half-made sandbox", "err", err)
			}
		case sb.VMStarted && sb.State == store.SandboxReady:
			c, err := s.shimProcs.Connect(ctx, sb.Dir)
			if err != nil {
				log.Warn("the VM's shim is gone", "err", err)
				s.rec().ShimLost()
				s.vmGone(ctx, sb, nil, fmt.Sprintf("the VM's shim exited while macvz was not running (%v)", err))
				continue
			}
			s.addShim(sb.ID, c)
			s.rec().ShimReconnected(ShimAtStart)
			log.Info("re-attached to the VM's shim", "pid", c.Pid())
			if sb = s.Refresh(ctx, sb); sb.State == store.SandboxReady {
				// The proxies died with the previous daemon.
				s.afterBoot(sb)
			}
		case !sb.VMStarted:
			// A boot the daemon's end interrupted may have left a shim
			// with a VM booting, or paused by a warm-start save, and a
			// disk clone (a diskless guest has none): discard that boot;
			// the next StartContainer boots again.
			if sb.Disk != "" {
				log.Warn("the VM was booting when macvz stopped; discarding that boot")
			}
			if err := s.shimProcs.Kill(ctx, sb.Dir); err != nil {
				log.Warn("killing the shim", "err", err)
			}
			if sb.Disk != "" {
				if err := s.sn.Remove(ctx, sb.Disk); err != nil && !errdefs.IsNotFound(err) {
					log.Warn("removing the disk clone", "err", err)
				}
				s.st.UpdateSandbox(sb.ID, func(r *store.Sandbox) error { r.Disk = ""; return nil })
			}
		default:
			// Stopped: a shim may linger if the daemon died mid-stop.
			if err := s.shimProcs.Kill(ctx, sb.Dir); err != nil {
				log.Warn("killing a stopped sandbox's shim", "err", err)
			}
		}
	}
}

// vmGone marks a ready sandbox NotReady because its VM or shim ended
// without StopPodSandbox, and its running containers Exited.
func (s *Controller) vmGone(ctx context.Context, sb store.Sandbox, c shim.Conn, reason string) store.Sandbox {
	sbLog(sb.ID).Warn("sandbox is no longer ready", "reason", reason)
	s.recordExits(ctx, sb, c, reason)
	rec, err := s.st.UpdateSandbox(sb.ID, func(r *store.Sandbox) error {
		if r.State != store.SandboxReady {
			return errNoChange
		}
		r.State = store.SandboxNotReady
		r.Reason = reason
		return nil
	})
	if err != nil {
		return sb
	}
	s.stopped(sb.ID, "")
	return rec
}

// Refresh checks that a ready sandbox's VM still runs and returns its
// current record. Lifecycle calls hold the sandbox lock; this one does
// not (listings must not wait for a boot): it only ever moves a record
// forward (Ready → NotReady, Running → Exited).
func (s *Controller) Refresh(ctx context.Context, sb store.Sandbox) store.Sandbox {
	if sb.State != store.SandboxReady || !sb.VMStarted || s.isStopping(sb.ID) {
		return sb
	}
	c, err := s.Shim(ctx, sb)
	if err != nil {
		if errdefs.IsNotFound(err) || errdefs.IsUnavailable(err) {
			s.dropShim(sb.ID)
			s.rec().ShimLost()
			return s.vmGone(ctx, sb, nil, fmt.Sprintf("the VM's shim is gone (%v)", err))
		}
		return sb
	}
	st, err := c.State(ctx)
	if err != nil {
		if errdefs.IsUnavailable(err) {
			s.dropShim(sb.ID)
			if c2, err2 := s.shimProcs.Connect(ctx, sb.Dir); err2 == nil {
				s.addShim(sb.ID, c2)
				s.rec().ShimReconnected(ShimReconnect)
				return sb
			}
			s.rec().ShimLost()
			return s.vmGone(ctx, sb, nil, fmt.Sprintf("the VM's shim is gone (%v)", err))
		}
		return sb
	}
	if st.GetState() == shimapi.VMState_VM_STOPPED {
		reason := "the VM stopped"
		if e := st.GetExit(); e != nil && e.GetReason() != "" {
			reason = "the VM stopped: " + e.GetReason()
		}
		sb = s.vmGone(ctx, sb, c, reason)
		// The shim has nothing left to do; its exit files stay.
		c.Shutdown(ctx)
		s.dropShim(sb.ID)
	}
	return sb
}

// RefreshContainer brings a running container's record up to date with
// its process (or, for the VM container, its VM).
func (s *Controller) RefreshContainer(ctx context.Context, c store.Container) store.Container {
	if c.State != store.ContainerRunning {
		return c
	}
	sb, err := s.st.Sandbox(c.SandboxID)
	if err != nil {
		return c
	}
	sb = s.Refresh(ctx, sb)
	if !c.IsVM && sb.State == store.SandboxReady {
		if sc := s.connectedShim(sb.ID); sc != nil {
			if ex := exitOf(ctx, sb.Dir, sc, c.ID); ex != nil {
				s.SetExited(c.ID, ex)
			}
		}
	}
	if rec, err := s.st.Container(c.ID); err == nil {
		return rec
	}
	return c
}

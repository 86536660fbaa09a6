package cri

import (
	"context"
	"fmt"
	"strings"
	"syscall"
	"time"

	"github.com/containerd/errdefs"
	"golang.org/x/sys/unix"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/macvz/macvz/internal/testpause"
	"github.com/macvz/macvz/runtime/agentapi"
	"github.com/macvz/macvz/runtime/sandbox"
	"github.com/macvz/macvz/runtime/shimapi"
	"github.com/macvz/macvz/runtime/store"
)

// killWait bounds the wait for a process after SIGKILL.
const killWait = 10 * time.Second

// StopContainer stops a running container: SIGTERM (or the image's stop
// signal) to its process group, SIGKILL to all its processes after the
// timeout. The VM container stops the VM: a graceful guest shutdown with
// the timeout as grace. Stopping a container that is not running, or an
// unknown one, is fine.
func (s *Service) StopContainer(ctx context.Context, r *runtimeapi.StopContainerRequest) (*runtimeapi.StopContainerResponse, error) {
	c, err := s.container(ctx, r.GetContainerId())
	if errdefs.IsNotFound(err) {
		// Idempotent, like every stop and remove.
		return &runtimeapi.StopContainerResponse{}, nil
	}
	if err != nil {
		return nil, err
	}
	unlock := s.ctl.Lock(c.SandboxID)
	defer unlock()
	if err := s.stopContainer(ctx, c.ID, time.Duration(r.GetTimeout())*time.Second); err != nil {
		return nil, err
	}
	return &runtimeapi.StopContainerResponse{}, nil
}

// stopContainer is StopContainer under the sandbox lock.
func (s *Service) stopContainer(ctx context.Context, id string, timeout time.Duration) error {
	c, err := s.container(ctx, id)
	if err != nil {
		return err
	}
	c = s.ctl.RefreshContainer(ctx, c)
	switch c.State {
	case store.ContainerCreated:
		// Never started: it cannot start any more (as with containerd).
		s.ctl.SetExited(c.ID, &sandbox.Exit{Code: 0, Reason: "Completed", Message: "stopped before it started", At: time.Now()})
		return nil
	case store.ContainerRunning:
	default:
		return nil
	}
	log := ctrLog(c)
	sb, err := s.sandbox(ctx, c.SandboxID)
	if err != nil {
		return err
	}
	if c.IsVM {
		if err := s.ctl.ShutdownVM(ctx, sb.ID, max(timeout, time.Second), fmt.Sprintf("its VM container %s was stopped", c.ID)); err != nil {
			return err
		}
		log.Info("VM container stopped; the VM is shut down")
		return nil
	}
	sc, err := s.ctl.Shim(ctx, sb)
	if err != nil {
		return err
	}
	pid := &agentapi.ProcessID{ContainerId: c.ID}
	if timeout > 0 {
		sig, err := stopSignal(c)
		if err != nil {
			return err
		}
		_, err = sc.Agent().SignalProcess(ctx, &agentapi.SignalProcessRequest{Id: pid, Signal: uint32(sig), Group: true})
		if err != nil && !errdefs.IsNotFound(err) && !errdefs.IsFailedPrecondition(err) {
			return fmt.Errorf("signalling the container: %w", err)
		}
		testpause.Pause(ctx, "stop") // test-only hook, inert unless MACVZ_TEST_PAUSE=stop
		wctx, cancel := context.WithTimeout(ctx, timeout)
		_, err = sc.Shim().WaitProcess(wctx, &shimapi.WaitProcessRequest{ContainerId: c.ID})
		cancel()
		if err == nil {
			s.ctl.RefreshContainer(ctx, c)
			log.Info("container stopped", "signal", sig)
			return nil
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		log.Info("container did not stop in time; killing it", "timeout", timeout)
	}
	// SIGKILL every process of the container, execs included.
	if _, err := sc.Agent().KillAll(ctx, &agentapi.KillAllRequest{ContainerId: c.ID, Signal: uint32(syscall.SIGKILL)}); err != nil && !errdefs.IsNotFound(err) {
		return fmt.Errorf("killing the container: %w", err)
	}
	wctx, cancel := context.WithTimeout(ctx, killWait)
	defer cancel()
	if _, err := sc.Shim().WaitProcess(wctx, &shimapi.WaitProcessRequest{ContainerId: c.ID}); err != nil {
		return fmt.Errorf("container %s did not exit after SIGKILL: %w", c.ID, err)
	}
	s.ctl.RefreshContainer(ctx, c)
	log.Info("container killed")
	return nil
}

// stopSignal is the container's stop signal: the CRI config's, else
// SIGTERM.
func stopSignal(c store.Container) (syscall.Signal, error) {
	cfg, err := ctrConfig(c)
	if err != nil {
		return 0, err
	}
	sig := cfg.GetStopSignal()
	if sig == runtimeapi.Signal_SIGNAL_RUNTIME_DEFAULT {
		return syscall.SIGTERM, nil
	}
	// The CRI enum is not the signal number; map it by name.
	name := strings.TrimPrefix(sig.String(), "SIGNAL_")
	if n := unix.SignalNum(name); n != 0 {
		return n, nil
	}
	return 0, fmt.Errorf("stop signal %s is not known on this host: %w", name, errdefs.ErrInvalidArgument)
}

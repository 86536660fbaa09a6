package cri

import (
	"context"
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/containerd/errdefs"
	"google.golang.org/protobuf/proto"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
	remotecommandserver "k8s.io/cri-streaming/pkg/streaming/remotecommand"
	utilexec "k8s.io/utils/exec"

	"github.com/macvz/macvz/internal/guard"
	"github.com/macvz/macvz/runtime/agentapi"
	"github.com/macvz/macvz/runtime/store"
)

// outputGrace is how long an exec's output may outlive the process (a
// background child holding it open) before the session ends anyway.
const outputGrace = 2 * time.Second

// Exec returns a streaming URL for a command in a running container.
func (s *Service) Exec(ctx context.Context, r *runtimeapi.ExecRequest) (*runtimeapi.ExecResponse, error) {
	if len(r.GetCmd()) == 0 {
		return nil, fmt.Errorf("exec needs a command: %w", errdefs.ErrInvalidArgument)
	}
	c, err := s.runningContainer(ctx, r.GetContainerId())
	if err != nil {
		return nil, err
	}
	req := proto.Clone(r).(*runtimeapi.ExecRequest)
	req.ContainerId = c.ID
	return s.stream.GetExec(req)
}

// runningContainer is a container that must be running.
func (s *Service) runningContainer(ctx context.Context, id string) (store.Container, error) {
	c, err := s.container(ctx, id)
	if err != nil {
		return c, err
	}
	c = s.ctl.RefreshContainer(ctx, c)
	if c.State != store.ContainerRunning {
		return c, fmt.Errorf("container %s is not running (%s): %w", c.ID, c.State, errdefs.ErrFailedPrecondition)
	}
	return c, nil
}

// execStream runs an exec session: the command in the container's VM
// with the session's stdio, tty and resizes. The process is killed and
// removed when the session ends, however it ends.
// Its goroutines carry the guest's bytes: each recovers from a panic
// (logged with the container and exec ids) and ends only this session.
func (s *Service) execStream(ctx context.Context, cid string, cmd []string, in io.Reader, out, errw io.WriteCloser, tty bool, resize <-chan remotecommandserver.TerminalSize) error {
	p, err := s.newExec(ctx, cid, cmd, tty, in != nil)
	if err != nil {
		return err
	}
	defer p.remove()
	log := p.log.With("exec", p.id.GetExecId())
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	var outputs sync.WaitGroup
	streams := []struct {
		stdio agentapi.Stdio
		w     io.Writer
	}{{agentapi.Stdio_STDOUT, writerOrNil(out)}}
	if !tty {
		streams = append(streams, struct {
			stdio agentapi.Stdio
			w     io.Writer
		}{agentapi.Stdio_STDERR, writerOrNil(errw)})
	}
	for _, st := range streams {
		rd, err := agentapi.OpenOutput(ctx, p.agent, p.id, st.stdio, 0)
		if err != nil {
			return fmt.Errorf("reading the exec's output: %w", err)
		}
		outputs.Add(1)
		go func() {
			defer outputs.Done()
			defer rd.Close()
			w := st.w
			if w == nil {
				w = io.Discard
			}
			guard.Do(log, "exec output copy", func() error {
				_, err := io.Copy(w, rd)
				return err
			})
		}()
	}
	if err := p.start(ctx); err != nil {
		return err
	}
	if in != nil {
		guard.Go(log, "exec stdin copy", func() { endOnGuestError(log, cancel, copyStdin(ctx, p.agent, p.id, in, true)) })
	}
	if tty && resize != nil {
		guard.Go(log, "exec terminal resizes", func() { forwardResize(ctx, p.agent, p.id, resize) })
	}
	w, err := p.agent.WaitProcess(ctx, &agentapi.WaitProcessRequest{Id: p.id})
	if err != nil {
		p.kill()
		if cause := guestCause(ctx); cause != nil {
			return cause
		}
		return err
	}
	done := make(chan struct{})
	go func() { outputs.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(outputGrace):
	case <-ctx.Done():
	}
	if code := w.GetStatus().GetExitCode(); code != 0 {
		return utilexec.CodeExitError{Err: fmt.Errorf("command terminated with exit code %d", code), Code: int(code)}
	}
	return nil
}

// writerOrNil turns a nil WriteCloser into a nil Writer (not a non-nil
// interface holding nil).
func writerOrNil(w io.WriteCloser) io.Writer {
	if w == nil {
		return nil
	}
	return w
}

package cri

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"syscall"
	"time"

	"github.com/containerd/errdefs"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/macvz/macvz/internal/guard"
	"github.com/macvz/macvz/runtime/agentapi"
	"github.com/macvz/macvz/runtime/shim"
	"github.com/macvz/macvz/runtime/store"
)

// maxExecSyncOutput caps each of ExecSync's stdout and stderr, as
// kubelet does (16 MiB): the rest is dropped.
const maxExecSyncOutput = 16 << 20

// ExecSync runs a command in a running container's VM, as the
// container's user and with its environment, and returns its output and
// exit code. A timeout kills it and answers DeadlineExceeded.
func (s *Service) ExecSync(ctx context.Context, r *runtimeapi.ExecSyncRequest) (*runtimeapi.ExecSyncResponse, error) {
	if len(r.GetCmd()) == 0 {
		return nil, fmt.Errorf("exec needs a command: %w", errdefs.ErrInvalidArgument)
	}
	p, err := s.newExec(ctx, r.GetContainerId(), r.GetCmd(), false, false)
	if err != nil {
		return nil, err
	}
	// The answer does not wait for the agent to drop the finished exec
	// (probes call this every few seconds).
	defer guard.Go(p.log, "exec removal", p.remove)
	if r.GetTimeout() > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, time.Duration(r.GetTimeout())*time.Second)
		defer cancel()
	}
	var stdout, stderr bytes.Buffer
	done := make(chan error, 2)
	for _, o := range []struct {
		stdio agentapi.Stdio
		buf   *bytes.Buffer
	}{{agentapi.Stdio_STDOUT, &stdout}, {agentapi.Stdio_STDERR, &stderr}} {
		rd, err := agentapi.OpenOutput(ctx, p.agent, p.id, o.stdio, 0)
		if err != nil {
			return nil, fmt.Errorf("reading the exec's output: %w", err)
		}
		go func() {
			// The output is the guest's: a panic ends this copy (with an
			// error) and the call, not the daemon.
			done <- guard.Do(p.log.With("exec", p.id.GetExecId()), "ExecSync output copy", func() error {
				defer rd.Close()
				_, err := io.Copy(o.buf, io.LimitReader(rd, maxExecSyncOutput))
				if err == nil {
					// Drain what is over the cap so the process is not
					// blocked on a full buffer.
					_, err = io.Copy(io.Discard, rd)
				}
				return err
			})
		}()
	}
	if err := p.start(ctx); err != nil {
		return nil, err
	}
	w, err := p.agent.WaitProcess(ctx, &agentapi.WaitProcessRequest{Id: p.id})
	if err == nil {
		// The output ends when the process and its children close it.
		for range 2 {
			select {
			case <-done:
			case <-ctx.Done():
			}
		}
	}
	// Whatever ended the wait early (our timeout, the client going, the
	// agent's clock reaching the deadline first), the command must not
	// outlive the call.
	if ctx.Err() != nil || err != nil {
		p.kill()
		if r.GetTimeout() > 0 && (errors.Is(ctx.Err(), context.DeadlineExceeded) || errdefs.IsDeadlineExceeded(err)) {
			return nil, fmt.Errorf("command %q timed out after %ds: %w", r.GetCmd(), r.GetTimeout(), context.DeadlineExceeded)
		}
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		return nil, fmt.Errorf("waiting for the exec: %w", err)
	}
	return &runtimeapi.ExecSyncResponse{
		Stdout:   stdout.Bytes(),
		Stderr:   stderr.Bytes(),
		ExitCode: w.GetStatus().GetExitCode(),
	}, nil
}

// execProcess is a process created in a container's VM for an exec.
type execProcess struct {
	agent agentapi.AgentClient
	sc    shim.Conn
	id    *agentapi.ProcessID
	log   *slog.Logger
}

// newExec creates (not starts) an exec process in a running container,
// with the container's user, environment and working directory.
func (s *Service) newExec(ctx context.Context, cid string, argv []string, tty, stdin bool) (*execProcess, error) {
	c, err := s.container(ctx, cid)
	if err != nil {
		return nil, err
	}
	c = s.ctl.RefreshContainer(ctx, c)
	if c.State != store.ContainerRunning {
		return nil, fmt.Errorf("container %s is not running (%s): %w", c.ID, c.State, errdefs.ErrFailedPrecondition)
	}
	sb, err := s.sandbox(ctx, c.SandboxID)
	if err != nil {
		return nil, err
	}
	sc, err := s.ctl.Shim(ctx, sb)
	if err != nil {
		return nil, err
	}
	cfg, err := ctrConfig(c)
	if err != nil {
		return nil, err
	}
	img, err := s.images.VMImage(ctx, c.ImageID)
	if err != nil {
		return nil, err
	}
	_, env, cwd, user := processOf(img.Descriptor.Process, cfg)
	pu, err := userOf(cfg.GetLinux().GetSecurityContext(), user)
	if err != nil {
		return nil, err
	}
	p := &execProcess{agent: sc.Agent(), sc: sc, id: &agentapi.ProcessID{ContainerId: c.ID, ExecId: randomHex(16)}, log: ctrLog(c)}
	creq := &agentapi.CreateProcessRequest{
		Id: p.id, Argv: argv, Env: completeEnv(env, store.SpecOf(sb).Hostname), Cwd: cwd, Tty: tty, Stdin: stdin,
	}
	pu.forOS(img.Descriptor.OS).apply(creq)
	_, err = p.agent.CreateProcess(ctx, creq)
	if err != nil {
		return nil, fmt.Errorf("creating the exec in the guest: %w", err)
	}
	return p, nil
}

// kill SIGKILLs the exec's process group.
// start starts the exec. A failed call may have started it all the
// same (its answer lost when the session or call ended): the process is
// killed then, for it must not outlive them and the guest does not
// remove a running one.
func (p *execProcess) start(ctx context.Context) error {
	if _, err := p.agent.StartProcess(ctx, &agentapi.StartProcessRequest{Id: p.id}); err != nil {
		p.kill()
		return fmt.Errorf("starting the exec: %w", err)
	}
	return nil
}

func (p *execProcess) kill() {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	p.agent.SignalProcess(ctx, &agentapi.SignalProcessRequest{Id: p.id, Signal: uint32(syscall.SIGKILL), Group: true})
	p.agent.WaitProcess(ctx, &agentapi.WaitProcessRequest{Id: p.id})
}

// remove drops the exec from the shim and the guest.
func (p *execProcess) remove() {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := p.sc.RemoveProcess(ctx, p.id); err != nil {
		p.log.Warn("removing an exec from the guest", "exec", p.id.GetExecId(), "err", err)
	}
}

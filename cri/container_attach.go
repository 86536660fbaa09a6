package cri

import (
	"context"
	"fmt"
	"io"
	"sync"

	"github.com/containerd/errdefs"
	"google.golang.org/protobuf/proto"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
	remotecommandserver "k8s.io/cri-streaming/pkg/streaming/remotecommand"

	"github.com/macvz/macvz/internal/guard"
	"github.com/macvz/macvz/runtime/agentapi"
	"github.com/macvz/macvz/runtime/shimapi"
)

// Attach returns a streaming URL attached to a running container's main
// process.
func (s *Service) Attach(ctx context.Context, r *runtimeapi.AttachRequest) (*runtimeapi.AttachResponse, error) {
	c, err := s.runningContainer(ctx, r.GetContainerId())
	if err != nil {
		return nil, err
	}
	if c.IsVM {
		return nil, fmt.Errorf("container %s is the VM itself and has no process to attach to; exec into it instead: %w", c.ID, errdefs.ErrFailedPrecondition)
	}
	req := proto.Clone(r).(*runtimeapi.AttachRequest)
	req.ContainerId = c.ID
	return s.stream.GetAttach(req)
}

// attachStream connects a session to the container's main process: its
// output from now on (the shim serves attach readers alongside the log
// copier), its stdin when the container was created with one (closed at
// the session's end with stdin_once), and terminal resizes. It ends when
// the process's output ends or the client goes.
func (s *Service) attachStream(ctx context.Context, cid string, in io.Reader, out, errw io.WriteCloser, tty bool, resize <-chan remotecommandserver.TerminalSize) error {
	c, err := s.runningContainer(ctx, cid)
	if err != nil {
		return err
	}
	cfg, err := ctrConfig(c)
	if err != nil {
		return err
	}
	sb, err := s.sandbox(ctx, c.SandboxID)
	if err != nil {
		return err
	}
	sc, err := s.ctl.Shim(ctx, sb)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	a := sc.Agent()
	id := &agentapi.ProcessID{ContainerId: c.ID}
	// The goroutines carry the guest's bytes: a panic ends only this
	// session (logged with the container id).
	log := ctrLog(c)
	if in != nil && cfg.GetStdin() {
		guard.Go(log, "attach stdin copy", func() { endOnGuestError(log, cancel, copyStdin(ctx, a, id, in, cfg.GetStdinOnce())) })
	}
	if cfg.GetTty() && resize != nil {
		guard.Go(log, "attach terminal resizes", func() { forwardResize(ctx, a, id, resize) })
	}
	var outputs sync.WaitGroup
	for _, st := range []struct {
		stdio agentapi.Stdio
		w     io.Writer
	}{{agentapi.Stdio_STDOUT, writerOrNil(out)}, {agentapi.Stdio_STDERR, writerOrNil(errw)}} {
		if st.w == nil || (cfg.GetTty() && st.stdio == agentapi.Stdio_STDERR) {
			continue
		}
		outputs.Add(1)
		go func() {
			defer outputs.Done()
			guard.Do(log, "attach output copy", func() error { return copyOutput(ctx, a, id, st.stdio, st.w) })
		}()
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		outputs.Wait()
		// Without an output to follow, the session lasts until the
		// process exits.
		guard.Do(log, "attach wait", func() error {
			_, err := sc.Shim().WaitProcess(ctx, &shimapi.WaitProcessRequest{ContainerId: c.ID})
			return err
		})
	}()
	select {
	case <-done:
	case <-ctx.Done():
	}
	return guestCause(ctx)
}

package cri

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"

	"github.com/containerd/errdefs"
	remotecommandserver "k8s.io/cri-streaming/pkg/streaming/remotecommand"

	"github.com/macvz/macvz/runtime/agentapi"
)

// Helpers that carry a streaming session's stdio to a guest process
// through the agent (exec and attach).

// stdinChunk bounds one WriteStdin: ttrpc messages stay small.
const stdinChunk = 32 << 10

// errGuestAnswer marks an answer of the guest agent that breaks the
// protocol: the session that got it ends.
var errGuestAnswer = errors.New("the guest agent's answer breaks the protocol")

// endOnGuestError runs a session's stdin copy and ends the session
// (cancel, with err as the cause the session returns: see guestCause)
// when the guest answered nonsense; other errors (the process closed
// its stdin, the client went) leave the session to end by itself.
func endOnGuestError(log *slog.Logger, cancel context.CancelCauseFunc, err error) {
	if errors.Is(err, errGuestAnswer) {
		log.Warn("ending the session", "err", err)
		cancel(err)
	}
}

// guestCause is why a session's context ended when endOnGuestError
// ended it, else nil: the client is told what the guest did rather than
// "context canceled".
func guestCause(ctx context.Context) error {
	if err := context.Cause(ctx); errors.Is(err, errGuestAnswer) {
		return err
	}
	return nil
}

// copyOutput copies one of a process's output streams to w until it
// ends (the process and its children closed it) or ctx ends. A nil w
// drains it: the agent keeps output until it is read.
func copyOutput(ctx context.Context, a agentapi.AgentClient, id *agentapi.ProcessID, stdio agentapi.Stdio, w io.Writer) error {
	rd, err := agentapi.OpenOutput(ctx, a, id, stdio, 0)
	if err != nil {
		return err
	}
	defer rd.Close()
	if w == nil {
		w = io.Discard
	}
	_, err = io.Copy(w, rd)
	return err
}

// copyStdin writes r to a process's stdin until r ends; closeAtEOF then
// closes the process's stdin (exec; attach with stdin_once).
func copyStdin(ctx context.Context, a agentapi.AgentClient, id *agentapi.ProcessID, r io.Reader, closeAtEOF bool) error {
	buf := make([]byte, stdinChunk)
	for {
		n, rerr := r.Read(buf)
		for p := buf[:n]; len(p) > 0; {
			resp, err := a.WriteStdin(ctx, &agentapi.WriteStdinRequest{Id: id, Data: p})
			if err != nil {
				return err
			}
			// Written comes from the guest: it must be within what we sent.
			w := resp.GetWritten()
			if w == 0 || uint64(w) > uint64(len(p)) {
				return fmt.Errorf("the guest agent reported writing %d bytes of %d to the process's stdin: %w: %w", w, len(p), errGuestAnswer, errdefs.ErrUnknown)
			}
			p = p[w:]
		}
		if rerr != nil {
			if closeAtEOF {
				if _, err := a.CloseStdin(ctx, &agentapi.CloseStdinRequest{Id: id}); err != nil && !errdefs.IsNotFound(err) && !errdefs.IsFailedPrecondition(err) {
					return err
				}
			}
			if errors.Is(rerr, io.EOF) {
				return nil
			}
			return rerr
		}
	}
}

// forwardResize passes terminal sizes to a process's terminal.
func forwardResize(ctx context.Context, a agentapi.AgentClient, id *agentapi.ProcessID, resize <-chan remotecommandserver.TerminalSize) {
	for {
		select {
		case sz, ok := <-resize:
			if !ok {
				return
			}
			a.ResizeTty(ctx, &agentapi.ResizeTtyRequest{Id: id, Size: &agentapi.TerminalSize{Rows: uint32(sz.Height), Cols: uint32(sz.Width)}})
		case <-ctx.Done():
			return
		}
	}
}

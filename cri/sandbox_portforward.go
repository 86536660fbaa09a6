package cri

import (
	"context"
	"fmt"
	"io"

	"github.com/containerd/errdefs"
	"google.golang.org/protobuf/proto"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/macvz/macvz/internal/guard"
	"github.com/macvz/macvz/runtime/agentapi"
	"github.com/macvz/macvz/runtime/store"
)

// PortForward returns a streaming URL that tunnels to ports on the
// sandbox VM's localhost.
func (s *Service) PortForward(ctx context.Context, r *runtimeapi.PortForwardRequest) (*runtimeapi.PortForwardResponse, error) {
	sb, err := s.readySandbox(ctx, r.GetPodSandboxId())
	if err != nil {
		return nil, err
	}
	for _, p := range r.GetPort() {
		if p <= 0 || p > 65535 {
			return nil, fmt.Errorf("port %d is not a TCP port: %w", p, errdefs.ErrInvalidArgument)
		}
	}
	req := proto.Clone(r).(*runtimeapi.PortForwardRequest)
	req.PodSandboxId = sb.ID
	return s.stream.GetPortForward(req)
}

// readySandbox is a sandbox whose VM runs.
func (s *Service) readySandbox(ctx context.Context, id string) (store.Sandbox, error) {
	sb, err := s.sandbox(ctx, id)
	if err != nil {
		return sb, err
	}
	sb = s.ctl.Refresh(ctx, sb)
	if sb.State != store.SandboxReady {
		return sb, fmt.Errorf("sandbox %s is not ready (%s): %w", sb.ID, orDefault(sb.Reason, "stopped"), errdefs.ErrFailedPrecondition)
	}
	if !sb.VMStarted {
		return sb, fmt.Errorf("sandbox %s has no running VM yet (no container started): %w", sb.ID, errdefs.ErrFailedPrecondition)
	}
	return sb, nil
}

// portForwardStream carries one forwarded connection to the guest's
// 127.0.0.1:port through the agent: it does not depend on the pod
// network. Several run at once, one per connection.
func (s *Service) portForwardStream(ctx context.Context, sandboxID string, port int32, stream io.ReadWriteCloser) error {
	sb, err := s.readySandbox(ctx, sandboxID)
	if err != nil {
		return err
	}
	sc, err := s.ctl.Shim(ctx, sb)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	conn, err := agentapi.DialPort(ctx, sc.Agent(), uint16(port))
	if err != nil {
		return fmt.Errorf("connecting to port %d in sandbox %s: %w", port, sb.ID, err)
	}
	defer conn.Close()
	// The copies carry the guest's bytes: a panic ends this connection
	// (logged with the sandbox and port), not the daemon.
	log := sbLog(sb.ID).With("port", port)
	fromGuest := make(chan error, 1)
	go func() {
		fromGuest <- guard.Do(log, "port-forward copy from the guest", func() error {
			_, err := io.Copy(stream, conn)
			return err
		})
	}()
	toGuest := make(chan error, 1)
	go func() {
		toGuest <- guard.Do(log, "port-forward copy to the guest", func() error {
			_, err := io.Copy(conn, stream)
			conn.CloseWrite()
			return err
		})
	}()
	// The guest's side ending ends the connection; the client's side
	// ending half-closes it and waits for the guest to finish answering.
	select {
	case err = <-fromGuest:
	case <-ctx.Done():
		return ctx.Err()
	}
	return err
}

package cri

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"time"

	"k8s.io/cri-streaming/pkg/streaming"
	remotecommandserver "k8s.io/cri-streaming/pkg/streaming/remotecommand"

	"github.com/macvz/macvz/cri/config"
	"github.com/macvz/macvz/internal/guard"
)

// The streaming server is the kubelet's CRI streaming package
// (k8s.io/cri-streaming): Exec, Attach and PortForward hand out one-time
// URLs of it, and it speaks SPDY and WebSocket to kubelet, crictl and
// critest. streamRuntime carries each session to the guest agent.

// streamServer serves the streaming URLs on its own listener.
type streamServer struct {
	streaming.Server
	http *http.Server
	ln   net.Listener
}

// newStreamServer listens at once, so the URLs name the real port even
// when the configured one is "0".
func newStreamServer(cfg config.Stream, rt streaming.Runtime) (*streamServer, error) {
	ln, err := net.Listen("tcp", net.JoinHostPort(cfg.Address, cfg.Port))
	if err != nil {
		return nil, fmt.Errorf("streaming server: %w", err)
	}
	sc := streaming.DefaultConfig
	sc.Addr = ln.Addr().String()
	sc.BaseURL = &url.URL{Scheme: "http", Host: ln.Addr().String()}
	sc.StreamIdleTimeout = time.Duration(cfg.IdleTimeout)
	srv, err := streaming.NewServer(sc, rt)
	if err != nil {
		ln.Close()
		return nil, err
	}
	s := &streamServer{Server: srv, ln: ln, http: &http.Server{Handler: srv, ReadHeaderTimeout: 30 * time.Second}}
	go func() {
		if err := s.http.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			slog.Error("streaming server stopped", "err", err)
		}
	}()
	slog.Info("streaming server listening", "addr", ln.Addr().String())
	return s, nil
}

// Close stops the server and every session.
func (s *streamServer) Close() error { return s.http.Close() }

// streamRuntime is streaming.Runtime on the Service.
type streamRuntime struct{ s *Service }

// Each session carries the guest's bytes; some run on goroutines of the
// streaming library that recover nothing (port-forward streams): a panic
// ends that session only.

func (r streamRuntime) Exec(ctx context.Context, containerID string, cmd []string, in io.Reader, out, errw io.WriteCloser, tty bool, resize <-chan remotecommandserver.TerminalSize) error {
	return guard.Do(slog.With("container", containerID), "exec session", func() error {
		return r.s.execStream(ctx, containerID, cmd, in, out, errw, tty, resize)
	})
}

func (r streamRuntime) Attach(ctx context.Context, containerID string, in io.Reader, out, errw io.WriteCloser, tty bool, resize <-chan remotecommandserver.TerminalSize) error {
	return guard.Do(slog.With("container", containerID), "attach session", func() error {
		return r.s.attachStream(ctx, containerID, in, out, errw, tty, resize)
	})
}

func (r streamRuntime) PortForward(ctx context.Context, podSandboxID string, port int32, stream io.ReadWriteCloser) error {
	return guard.Do(sbLog(podSandboxID).With("port", port), "port-forward session", func() error {
		return r.s.portForwardStream(ctx, podSandboxID, port, stream)
	})
}

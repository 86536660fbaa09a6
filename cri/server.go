package cri

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"time"

	"google.golang.org/grpc"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/macvz/macvz/cri/config"
)

// maxMsgSize matches kubelet's CRI client limit (16 MiB), so a large
// ListContainers or ExecSync answer is not refused by us first.
const maxMsgSize = 16 << 20

// Serve runs the CRI services on cfg.Socket until ctx is done, then stops
// gracefully: new calls are refused, running ones get up to grace to
// finish, then the rest are cut off. Each of started runs once the CRI
// socket serves (cmd/macvz: the device plugin); the function it returns
// runs when Serve returns, before the service's stores close.
func Serve(ctx context.Context, cfg *config.Config, grace time.Duration, started ...func(*Service) (stop func())) error {
	// Checked before the stores are opened: a second daemon would block
	// on their locks instead of saying what is wrong.
	if err := refuseLiveSocket(cfg.Socket); err != nil {
		return err
	}
	// Before the service: the VMs it re-attaches and the boots it
	// starts are traced as well.
	traceOpts, stopTracing, err := startTracing(ctx, cfg.Tracing)
	if err != nil {
		return err
	}
	defer stopTracing()
	svc, err := NewService(ctx, cfg)
	if err != nil {
		return err
	}
	defer svc.Close()

	ln, err := listenUnix(cfg.Socket)
	if err != nil {
		return err
	}
	fi, err := os.Lstat(cfg.Socket)
	if err != nil {
		ln.Close()
		return err
	}
	defer removeSocketIfOurs(cfg.Socket, fi)

	srv := grpc.NewServer(append(append(svc.interceptors(), traceOpts...),
		grpc.MaxRecvMsgSize(maxMsgSize),
		grpc.MaxSendMsgSize(maxMsgSize),
		grpc.ForceServerCodecV2(newListCodec(svc.listed)),
	)...)
	runtimeapi.RegisterRuntimeServiceServer(srv, svc)
	runtimeapi.RegisterImageServiceServer(srv, svc)

	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	slog.Info("serving CRI", "socket", cfg.Socket, "backend", cfg.Backend, "root", cfg.Root, "version", RuntimeVersion)
	if stop := StartNodeVM(svc); stop != nil {
		defer stop()
	}
	stopAdmin, err := serveAdmin(svc)
	if err != nil {
		srv.Stop()
		return fmt.Errorf("admin socket: %w", err)
	}
	defer stopAdmin()
	stopMetrics, err := svc.serveMetrics()
	if err != nil {
		srv.Stop()
		return err
	}
	defer stopMetrics()
	for _, f := range started {
		if stop := f(svc); stop != nil {
			defer stop()
		}
	}

	select {
	case err := <-errc:
		return fmt.Errorf("grpc server: %w", err)
	case <-ctx.Done():
	}
	slog.Info("shutting down", "grace", grace)
	// The event streams last as long as their clients: end them, or the
	// graceful stop would wait the whole grace period for them.
	svc.events.close()
	done := make(chan struct{})
	go func() { srv.GracefulStop(); close(done) }()
	select {
	case <-done:
	case <-time.After(grace):
		slog.Warn("calls still running after the grace period; cutting them off")
		srv.Stop()
		<-done
	}
	return nil
}

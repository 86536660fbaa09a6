package cri

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"github.com/containerd/errdefs"
	"google.golang.org/grpc"

	"github.com/macvz/macvz/cri/config"
	"github.com/macvz/macvz/runtime/adminapi"
)

// AdminSocket is the daemon's admin API (runtime/adminapi: the `macvz
// node`, `vm` and `image` commands): a unix socket in the state
// directory, root only. It is not CRI and nothing in a VM can reach it
// (the node VM's kubelet reaches the CRI socket only).
func AdminSocket(cfg *config.Config) string { return filepath.Join(cfg.State, "admin.sock") }

// adminServer serves adminapi.Admin over the service: the same stores,
// controller and image service logic as the CRI verbs, so what an
// operator does through it is what kubelet would see. One file per
// group: admin_vm.go (VMs), admin_image.go (images).
type adminServer struct {
	adminapi.UnimplementedAdminServer
	s *Service
}

// serveAdmin serves the admin API until the returned stop. Its calls go
// through the CRI's error interceptors (errors.go): the same statuses
// and the same panic guard.
func serveAdmin(s *Service) (stop func(), err error) {
	path := AdminSocket(s.cfg)
	ln, err := listenUnixMode(path, 0o600)
	if err != nil {
		return nil, err
	}
	fi, err := os.Lstat(path)
	if err != nil {
		ln.Close()
		return nil, err
	}
	srv := grpc.NewServer(
		grpc.ChainUnaryInterceptor(unaryErrors),
		grpc.ChainStreamInterceptor(streamErrors),
		grpc.MaxRecvMsgSize(maxMsgSize),
		grpc.MaxSendMsgSize(maxMsgSize),
	)
	adminapi.RegisterAdminServer(srv, &adminServer{s: s})
	go func() {
		if err := srv.Serve(ln); err != nil {
			slog.Warn("admin API", "err", err)
		}
	}()
	return func() {
		// A console follower never ends on its own: Stop, not
		// GracefulStop; admin calls are the operator's, who retries.
		srv.Stop()
		removeSocketIfOurs(path, fi)
	}, nil
}

// errNoNodeVM answers the node calls of a daemon without a node VM.
var errNoNodeVM = fmt.Errorf("no node VM: [node] enabled is false in the daemon's configuration: %w", errdefs.ErrFailedPrecondition)

func (a *adminServer) NodeStatus(ctx context.Context, _ *adminapi.NodeStatusRequest) (*adminapi.NodeStatusResponse, error) {
	if a.s.node == nil {
		return nil, errNoNodeVM
	}
	st := a.s.node.Status()
	return &adminapi.NodeStatusResponse{
		State: st.State, SandboxId: st.SandboxID, ContainerId: st.ContainerID, Image: st.Image,
		SinceUnixNano: unixNano(st.Since), Restarts: int64(st.Restarts), LastError: st.LastError,
		LogPath: st.LogPath, PodIp: st.PodIP,
	}, nil
}

func (a *adminServer) NodeRestart(ctx context.Context, _ *adminapi.NodeRestartRequest) (*adminapi.NodeRestartResponse, error) {
	if a.s.node == nil {
		return nil, errNoNodeVM
	}
	a.s.node.Restart()
	return &adminapi.NodeRestartResponse{}, nil
}

func (a *adminServer) NodeStop(ctx context.Context, _ *adminapi.NodeStopRequest) (*adminapi.NodeStopResponse, error) {
	if a.s.node == nil {
		return nil, errNoNodeVM
	}
	a.s.node.Stop()
	return &adminapi.NodeStopResponse{}, nil
}

// unixNano is t in Unix nanoseconds, 0 for the zero time (whose
// UnixNano is undefined).
func unixNano(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixNano()
}

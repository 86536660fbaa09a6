package cri

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"time"

	"github.com/macvz/macvz/cri/config"
)

// AdminSocket is the daemon's admin API (the `macvz node` commands): a
// unix socket in the state directory, root only. It is not CRI and
// nothing in a VM can reach it.
func AdminSocket(cfg *config.Config) string { return filepath.Join(cfg.State, "admin.sock") }

// serveAdmin serves the admin API until the returned stop:
//
//	GET  /v1/node          the node VM's nodevm.Status (404: no node VM)
//	POST /v1/node/restart  make the node VM again (or start it after a stop)
//	POST /v1/node/stop     remove the node VM until a restart
func serveAdmin(s *Service) (stop func(), err error) {
	path := AdminSocket(s.cfg)
	ln, err := listenUnix(path)
	if err != nil {
		return nil, err
	}
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return nil, err
	}
	fi, err := os.Lstat(path)
	if err != nil {
		ln.Close()
		return nil, err
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/node", func(w http.ResponseWriter, r *http.Request) {
		if s.node == nil {
			http.Error(w, "no node VM: [node] enabled is false in the daemon's configuration", http.StatusNotFound)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(s.node.Status())
	})
	mux.HandleFunc("POST /v1/node/restart", func(w http.ResponseWriter, r *http.Request) {
		if s.node == nil {
			http.Error(w, "no node VM: [node] enabled is false in the daemon's configuration", http.StatusNotFound)
			return
		}
		s.node.Restart()
		w.WriteHeader(http.StatusAccepted)
	})
	mux.HandleFunc("POST /v1/node/stop", func(w http.ResponseWriter, r *http.Request) {
		if s.node == nil {
			http.Error(w, "no node VM: [node] enabled is false in the daemon's configuration", http.StatusNotFound)
			return
		}
		s.node.Stop()
		w.WriteHeader(http.StatusAccepted)
	})
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			slog.Warn("admin API", "err", err)
		}
	}()
	return func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
		removeSocketIfOurs(path, fi)
	}, nil
}

// AdminClient is an HTTP client of the admin socket at path.
func AdminClient(path string) *http.Client {
	return &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", path)
		},
	}}
}

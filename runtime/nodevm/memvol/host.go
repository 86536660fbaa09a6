package memvol

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"sync"

	"github.com/containerd/errdefs"
)

// Handler serves the helper's requests on the host, for volume
// directories below Roots (the node VM's shares) only.
type Handler struct {
	Roots []string
	Log   *slog.Logger
}

func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path != "/v1/tmpfs" || (r.Method != http.MethodPost && r.Method != http.MethodDelete && r.Method != http.MethodGet) {
		http.Error(w, "not found", http.StatusNotFound)
		return
	}
	if r.Method == http.MethodGet {
		var rep Reply
		for _, p := range listTmpfs() {
			if _, _, err := h.volume(p); err == nil {
				rep.Paths = append(rep.Paths, p)
			}
		}
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(rep)
		return
	}
	var req Request
	if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, 64<<10)).Decode(&req); err != nil {
		http.Error(w, "bad request: "+err.Error(), http.StatusBadRequest)
		return
	}
	root, rel, err := h.volume(req.Path)
	if err == nil && req.SizeBytes < 0 {
		err = fmt.Errorf("size %d: %w", req.SizeBytes, errdefs.ErrInvalidArgument)
	}
	var rep Reply
	if err == nil {
		if r.Method == http.MethodPost {
			rep.Tmpfs, err = mountTmpfs(root, rel, req.SizeBytes)
		} else {
			rep.Tmpfs, err = unmountTmpfs(root, rel)
		}
	}
	log := h.Log
	if log == nil {
		log = slog.Default()
	}
	if err != nil {
		log.Warn("a memory-backed volume of the node VM's kubelet", "method", r.Method, "path", req.Path, "err", err)
		code := http.StatusInternalServerError
		if errdefs.IsInvalidArgument(err) {
			code = http.StatusBadRequest
		}
		http.Error(w, err.Error(), code)
		return
	}
	log.Debug("memory-backed volume", "method", r.Method, "path", req.Path, "tmpfs", rep.Tmpfs)
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(rep)
}

// volume checks that p is a pod volume's directory as kubelet lays them
// out (<root-dir>/pods/<uid>/volumes/<plugin>/<name>) below one of the
// roots, and returns that root and p relative to it.
func (h *Handler) volume(p string) (root, rel string, err error) {
	if !filepath.IsAbs(p) || filepath.Clean(p) != p || strings.ContainsRune(p, 0) {
		return "", "", fmt.Errorf("%q is not a clean absolute path: %w", p, errdefs.ErrInvalidArgument)
	}
	parts := strings.Split(p, "/")
	n := len(parts)
	if n < 6 || parts[n-5] != "pods" || parts[n-3] != "volumes" {
		return "", "", fmt.Errorf("%s is not a pod volume's directory (<kubelet root>/pods/<uid>/volumes/<plugin>/<name>): %w", p, errdefs.ErrInvalidArgument)
	}
	for _, r := range h.Roots {
		r = filepath.Clean(r)
		rel, err := filepath.Rel(r, p)
		if err == nil && rel != "." && filepath.IsLocal(rel) {
			return r, rel, nil
		}
	}
	return "", "", fmt.Errorf("%s is not below a directory shared with the node VM: %w", p, errdefs.ErrInvalidArgument)
}

// Dialer serves h on in-process connections and returns how to make one
// (a guestfwd.Forward's Dial), until ctx ends.
func Dialer(ctx context.Context, h http.Handler) func(context.Context) (net.Conn, error) {
	l := &pipeListener{conns: make(chan net.Conn), done: make(chan struct{})}
	srv := &http.Server{Handler: h}
	go srv.Serve(l)
	context.AfterFunc(ctx, func() { srv.Close() })
	return func(ctx context.Context) (net.Conn, error) {
		c, s := net.Pipe()
		select {
		case l.conns <- s:
			return c, nil
		case <-l.done:
			c.Close()
			s.Close()
			return nil, net.ErrClosed
		case <-ctx.Done():
			c.Close()
			s.Close()
			return nil, ctx.Err()
		}
	}
}

// pipeListener hands the server the ends of in-process pipes.
type pipeListener struct {
	conns chan net.Conn
	done  chan struct{}
	once  sync.Once
}

func (l *pipeListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

func (l *pipeListener) Close() error {
	l.once.Do(func() { close(l.done) })
	return nil
}

func (l *pipeListener) Addr() net.Addr { return pipeAddr{} }

type pipeAddr struct{}

func (pipeAddr) Network() string { return "pipe" }
func (pipeAddr) String() string  { return "memvol" }

var errNotDir = errors.New("not a directory")

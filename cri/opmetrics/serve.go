package opmetrics

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"
)

// Serve serves /metrics over plain HTTP on addr (IP:port; port 0 picks a
// free one) until stop is called, and returns its URL. Anyone who
// reaches the address reads the node's operational data (how many VMs
// run, what fails, how busy the daemon is): on an address other than
// loopback it says so in the log. Nothing secret is in the metrics: no
// credentials, image names or sandbox IDs.
func (m *Metrics) Serve(addr string) (url string, stop func(), err error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return "", nil, fmt.Errorf("metrics: %w", err)
	}
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", m.Handler())
	srv := &http.Server{
		Handler:           mux,
		ReadHeaderTimeout: 10 * time.Second,
		WriteTimeout:      60 * time.Second,
		IdleTimeout:       2 * time.Minute,
		ErrorLog:          slog.NewLogLogger(slog.Default().Handler(), slog.LevelDebug),
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			slog.Warn("the metrics server stopped", "err", err)
		}
	}()
	url = "http://" + ln.Addr().String() + "/metrics"
	if tcp, ok := ln.Addr().(*net.TCPAddr); ok && !tcp.IP.IsLoopback() {
		slog.Warn("serving metrics beyond loopback, without authentication: whoever reaches this address reads the node's VM counts, failures and load", "url", url)
	} else {
		slog.Info("serving metrics", "url", url)
	}
	return url, func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		if srv.Shutdown(ctx) != nil {
			srv.Close()
		}
		<-done
	}, nil
}

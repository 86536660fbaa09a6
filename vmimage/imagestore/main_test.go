package imagestore_test

import (
	"flag"
	"log/slog"
	"os"
	"testing"

	"github.com/containerd/log"
)

func TestMain(m *testing.M) {
	if os.Getenv(benchRegistryEnv) != "" {
		// This process is BenchmarkPullTart's registry (serveBenchRegistry).
		os.Exit(serveBenchRegistry())
	}
	flag.Parse()
	// The store logs every pull at info, and containerd's content store
	// warns about fs-verity on every Open: keep test output to failures.
	if !testing.Verbose() {
		slog.SetDefault(slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})))
		_ = log.SetLevel("error")
	}
	code := m.Run()
	stopBenchRegistry()
	os.Exit(code)
}

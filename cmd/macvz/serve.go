package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	goruntime "runtime"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/macvz/macvz/cri"
	"github.com/macvz/macvz/cri/config"
	"github.com/macvz/macvz/netplugin"
	"github.com/macvz/macvz/netplugin/cnimgr"
)

func serveCmd() *cobra.Command {
	var (
		cfgPath string
		grace   time.Duration
	)
	cmd := &cobra.Command{
		Use:   "serve",
		Short: "Serve CRI v1 on the configured unix socket",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := config.Load(cfgPath, cmd.Flags().Changed("config"))
			if err != nil {
				return err
			}
			setupLogging(cfg.Log)
			// SIGTERM (systemd, launchd, kill) and SIGINT stop gracefully;
			// VMs are owned by their shims and keep running.
			ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
			defer stop()
			return cri.Serve(ctx, cfg, grace, devicePlugin(cfg))
		},
	}
	cmd.Flags().StringVar(&cfgPath, "config", config.DefaultPath, "configuration file (TOML); `macvz config default` prints one")
	cmd.Flags().DurationVar(&grace, "shutdown-grace", 10*time.Second, "how long running CRI calls may take to finish on SIGTERM")
	return cmd
}

func setupLogging(l config.Log) {
	var level slog.Level
	_ = level.UnmarshalText([]byte(l.Level)) // validated by config
	opts := &slog.HandlerOptions{Level: level}
	var h slog.Handler
	if l.Format == "json" {
		h = slog.NewJSONHandler(os.Stderr, opts)
	} else {
		h = slog.NewTextHandler(os.Stderr, opts)
	}
	slog.SetDefault(slog.New(h))
}

func configCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "config", Short: "Configuration helpers"}
	cmd.AddCommand(&cobra.Command{
		Use:   "default",
		Short: "Print the full default configuration, with comments",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			_, err := cmd.OutOrStdout().Write(config.DefaultTOML())
			return err
		},
	})
	cmd.AddCommand(&cobra.Command{
		Use:   "network",
		Short: "Print the default pod network (a CNI conflist) for this host",
		Long: "Print the default pod network (a CNI conflist for <conf_dir>/10-macvz.conflist) for this host: bridge-tap on Linux; " +
			"on a Mac socket_vmnet's shared network when its socket is at " + strings.Join(netplugin.SocketVmnetPaths, " or ") +
			", else vmnet NAT, which isolates pods from each other and from the node VM (it says which and why on stderr).",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			mac := netplugin.DefaultMacNetwork(netplugin.SocketVmnetPaths, netplugin.IsUnixSocket)
			if goruntime.GOOS == "darwin" {
				// Why, on stderr: stdout is the file to write.
				fmt.Fprintf(cmd.ErrOrStderr(), "macvz: mode %s: %s\n", mac.Mode, mac.Why)
			}
			_, err := cmd.OutOrStdout().Write(cnimgr.DefaultConflist(goruntime.GOOS, mac))
			return err
		},
	})
	return cmd
}

func versionCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print the version",
		Args:  cobra.NoArgs,
		Run: func(cmd *cobra.Command, _ []string) {
			fmt.Fprintf(cmd.OutOrStdout(), "%s %s (CRI %s)\n", cri.RuntimeName, cri.RuntimeVersion, "v1")
		},
	}
}

package main

import (
	"context"

	"github.com/spf13/cobra"

	"github.com/macvz/macvz/cri"
	"github.com/macvz/macvz/runtime/shim"
)

// shimCmd is `macvz shim --dir DIR`: the per-VM shim the daemon starts
// (runtime/shim.Spawn), one per sandbox VM. It is not meant to be run by
// hand, but it can be, for debugging: it reads DIR/spec.json and
// DIR/shim.json, logs to DIR/shim.log and serves DIR/shim.sock.
func shimCmd() *cobra.Command {
	var opts shim.RunOptions
	cmd := &cobra.Command{
		Use:    "shim",
		Short:  "Run one sandbox VM (started by the daemon)",
		Hidden: true,
		Args:   cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			// The shim handles SIGTERM and SIGINT itself (it stops its VM
			// first) and outlives the daemon: no context tied to either.
			shim.Version = cri.RuntimeVersion
			return shim.Run(context.Background(), opts)
		},
	}
	cmd.Flags().StringVar(&opts.Dir, "dir", "", "the sandbox state directory")
	cmd.Flags().StringVar(&opts.LogLevel, "log-level", "", "log level (default: shim.json's, else info)")
	cmd.MarkFlagRequired("dir")
	return cmd
}

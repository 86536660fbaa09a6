package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/macvz/macvz/runtime/adminapi"
	"github.com/macvz/macvz/runtime/nodevm"
)

// nodeCmd is `macvz node status|logs|restart|stop`: the node VM through
// the daemon's admin API.
func nodeCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "node", Short: "The node VM: kubelet in a Linux VM ([node] in the configuration)"}
	cfgPath := addConfigFlag(cmd)
	status := func(cmd *cobra.Command) (nodevm.Status, error) {
		var st nodevm.Status
		err := withAdmin(cmd, cfgPath, func(ctx context.Context, c *adminConn) error {
			r, err := c.NodeStatus(ctx, &adminapi.NodeStatusRequest{})
			if err != nil {
				return err
			}
			st = nodevm.Status{
				State: r.GetState(), SandboxID: r.GetSandboxId(), ContainerID: r.GetContainerId(), Image: r.GetImage(),
				Since: fromUnixNano(r.GetSinceUnixNano()), Restarts: int(r.GetRestarts()), LastError: r.GetLastError(),
				LogPath: r.GetLogPath(), PodIP: r.GetPodIp(),
			}
			return nil
		})
		return st, err
	}

	var asJSON bool
	statusCmd := &cobra.Command{
		Use:   "status",
		Short: "Show the node VM's state, its kubelet and its last error",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			st, err := status(cmd)
			if err != nil {
				return err
			}
			if asJSON {
				enc := json.NewEncoder(cmd.OutOrStdout())
				enc.SetIndent("", "  ")
				return enc.Encode(st)
			}
			w := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintf(w, "state\t%s (since %s)\n", st.State, st.Since.Format(time.RFC3339))
			fmt.Fprintf(w, "image\t%s\n", st.Image)
			fmt.Fprintf(w, "sandbox\t%s\n", st.SandboxID)
			fmt.Fprintf(w, "kubelet container\t%s\n", st.ContainerID)
			fmt.Fprintf(w, "restarts\t%d\n", st.Restarts)
			if st.LastError != "" {
				fmt.Fprintf(w, "last error\t%s\n", st.LastError)
			}
			fmt.Fprintf(w, "kubelet log\t%s\n", st.LogPath)
			return w.Flush()
		},
	}
	statusCmd.Flags().BoolVar(&asJSON, "json", false, "print the status as JSON")

	var follow bool
	logsCmd := &cobra.Command{
		Use:   "logs",
		Short: "Print kubelet's log from the node VM (-f follows it)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			st, err := status(cmd)
			if err != nil {
				return err
			}
			return printCRILog(cmd.OutOrStdout(), st.LogPath, follow)
		},
	}
	logsCmd.Flags().BoolVarP(&follow, "follow", "f", false, "keep printing new lines")

	restartCmd := &cobra.Command{
		Use:   "restart",
		Short: "Make the node VM again (kubelet with it), or start it after a stop; pods are not touched",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return withAdmin(cmd, cfgPath, func(ctx context.Context, c *adminConn) error {
				if _, err := c.NodeRestart(ctx, &adminapi.NodeRestartRequest{}); err != nil {
					return err
				}
				fmt.Fprintln(cmd.OutOrStdout(), "node VM restarting; `macvz node status` follows it")
				return nil
			})
		},
	}
	stopCmd := &cobra.Command{
		Use:   "stop",
		Short: "Remove the node VM (kubelet with it) until `macvz node restart` or the daemon's next start; pods are not touched",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return withAdmin(cmd, cfgPath, func(ctx context.Context, c *adminConn) error {
				if _, err := c.NodeStop(ctx, &adminapi.NodeStopRequest{}); err != nil {
					return err
				}
				fmt.Fprintln(cmd.OutOrStdout(), "node VM stopping; `macvz node status` follows it")
				return nil
			})
		},
	}
	cmd.AddCommand(statusCmd, logsCmd, restartCmd, stopCmd)
	return cmd
}

// printCRILog prints the messages of a CRI-format log ("<time> <stream>
// <P|F> <message>"), joining partial lines; with follow it waits for
// more.
func printCRILog(w io.Writer, path string, follow bool) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	r := bufio.NewReader(f)
	var partial strings.Builder
	pending := "" // an unfinished line read at the end of the file
	for {
		line, err := r.ReadString('\n')
		line = pending + line
		pending = ""
		if err == io.EOF && follow {
			pending = line
			time.Sleep(500 * time.Millisecond)
			continue
		}
		if line != "" {
			msg, full := criLogMessage(strings.TrimSuffix(line, "\n"))
			partial.WriteString(msg)
			if full {
				fmt.Fprintln(w, partial.String())
				partial.Reset()
			}
		}
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
	}
}

// criLogMessage is a CRI log line's message, and whether it ends a line
// (tag F) rather than continuing into the next (P). A line not in the
// format is returned whole.
func criLogMessage(line string) (string, bool) {
	parts := strings.SplitN(line, " ", 4)
	if len(parts) < 3 || (parts[2] != "F" && parts[2] != "P") {
		return line, true
	}
	if _, err := time.Parse(time.RFC3339Nano, parts[0]); err != nil {
		return line, true
	}
	msg := ""
	if len(parts) == 4 {
		msg = parts[3]
	}
	return msg, parts[2] == "F"
}

package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/macvz/macvz/cri"
	"github.com/macvz/macvz/cri/config"
	"github.com/macvz/macvz/runtime/nodevm"
)

// nodeCmd is `macvz node status|logs|restart`: the node VM through the
// daemon's admin socket.
func nodeCmd() *cobra.Command {
	var cfgPath string
	cmd := &cobra.Command{Use: "node", Short: "The node VM: kubelet in a Linux VM ([node] in the configuration)"}
	cmd.PersistentFlags().StringVar(&cfgPath, "config", config.DefaultPath, "the daemon's configuration file (its state directory holds the admin socket)")
	admin := func(cmd *cobra.Command) (*http.Client, error) {
		cfg, err := config.Load(cfgPath, cmd.Flags().Changed("config"))
		if err != nil {
			return nil, err
		}
		return cri.AdminClient(cri.AdminSocket(cfg)), nil
	}
	status := func(cmd *cobra.Command) (nodevm.Status, error) {
		var st nodevm.Status
		c, err := admin(cmd)
		if err != nil {
			return st, err
		}
		resp, err := c.Get("http://macvz/v1/node")
		if err != nil {
			return st, fmt.Errorf("asking the daemon (is `macvz serve` running?): %w", err)
		}
		defer resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			b, _ := io.ReadAll(resp.Body)
			return st, errors.New(strings.TrimSpace(string(b)))
		}
		return st, json.NewDecoder(resp.Body).Decode(&st)
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

	post := func(cmd *cobra.Command, verb, said string) error {
		c, err := admin(cmd)
		if err != nil {
			return err
		}
		resp, err := c.Post("http://macvz/v1/node/"+verb, "", nil)
		if err != nil {
			return fmt.Errorf("asking the daemon (is `macvz serve` running?): %w", err)
		}
		defer resp.Body.Close()
		if resp.StatusCode != http.StatusAccepted {
			b, _ := io.ReadAll(resp.Body)
			return errors.New(strings.TrimSpace(string(b)))
		}
		fmt.Fprintln(cmd.OutOrStdout(), said)
		return nil
	}
	restartCmd := &cobra.Command{
		Use:   "restart",
		Short: "Make the node VM again (kubelet with it), or start it after a stop; pods are not touched",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return post(cmd, "restart", "node VM restarting; `macvz node status` follows it")
		},
	}
	stopCmd := &cobra.Command{
		Use:   "stop",
		Short: "Remove the node VM (kubelet with it) until `macvz node restart` or the daemon's next start; pods are not touched",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return post(cmd, "stop", "node VM stopping; `macvz node status` follows it")
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

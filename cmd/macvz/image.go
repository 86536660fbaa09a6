package main

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"

	"github.com/spf13/cobra"

	"github.com/macvz/macvz/vmimage/agentinstall"
)

func imageCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "image", Short: "The daemon's images (pull, ls, inspect, rm, prune, import, push), and preparing VM images (install-agent)"}
	var agent string
	var keepTart bool
	install := &cobra.Command{
		Use:   "install-agent [--agent PATH] DISK.IMG|TART-VM-DIR",
		Short: "Install the macvz guest agent and its launchd job into a macOS VM disk (run on the Mac, as root, with the VM stopped)",
		Long: `install-agent attaches a macOS VM disk image without mounting it, mounts
its APFS Data volume, writes the agent to /usr/local/bin/macvz-agent and its
launchd job to /Library/LaunchDaemons/io.macvz.agent.plist (root:wheel), and
detaches the disk. Give a Tart VM directory (~/.tart/vms/NAME) or its disk.img;
then make it an image: macvz image import ~/.tart/vms/NAME REF (this
machine), or macvz image push REF ~/.tart/vms/NAME (a registry).

Tart's images run tart-guest-agent from launchd (a root daemon and a per-user
agent) for Tart's host, which is not there under macvz: install-agent moves
their plists to /Library/macvz/disabled-launchd-jobs/ in the guest (move one
back to enable it again), unless --keep-tart-agent is given.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if runtime.GOOS != "darwin" {
				return fmt.Errorf("install-agent needs macOS's hdiutil and diskutil: run it on the Mac")
			}
			if os.Geteuid() != 0 {
				return fmt.Errorf("install-agent writes root-owned files into the guest: run it as root (sudo)")
			}
			disk, err := agentinstall.DiskImage(args[0])
			if err != nil {
				return err
			}
			if agent == "" {
				agent = defaultAgent()
			}
			in := &agentinstall.Installer{Run: agentinstall.ExecRunner, KeepTartAgent: keepTart}
			res, err := in.Install(cmd.Context(), disk, agent)
			if err != nil {
				return err
			}
			printInstall(cmd.OutOrStdout(), disk, agent, keepTart, res)
			return nil
		},
	}
	install.Flags().BoolVar(&keepTart, "keep-tart-agent", false, "leave the launchd jobs of Tart's guest agent (tart-guest-agent) enabled")
	install.Flags().StringVar(&agent, "agent", "", "the darwin/arm64 agent binary (default: macvz-agent next to this binary, else bin/darwin-arm64/macvz-agent)")
	cmd.AddCommand(install)
	cmd.AddCommand(imageAdminCmds()...)
	cmd.AddCommand(imagePullCmd(), imageImportCmd(), imagePushCmd())
	return cmd
}

// defaultAgent is the agent installed next to macvz, else the one
// `make build` leaves in the source tree.
func defaultAgent() string {
	if exe, err := os.Executable(); err == nil {
		p := filepath.Join(filepath.Dir(exe), "macvz-agent")
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	return filepath.Join("bin", "darwin-arm64", "macvz-agent")
}

// printInstall says what install-agent did to the image.
func printInstall(w io.Writer, disk, agent string, keepTart bool, res *agentinstall.Result) {
	fmt.Fprintf(w, "installed %s into %s (Data volume %s of %s): /%s, /%s\n",
		agent, disk, res.Volume, res.Device, agentinstall.AgentPath, agentinstall.PlistPath)
	for _, j := range res.Disabled {
		fmt.Fprintf(w, "disabled tart-guest-agent's launchd job %s: moved %s to %s\n", j.Label, j.From, j.To)
	}
	switch {
	case keepTart:
		fmt.Fprintln(w, "tart-guest-agent's launchd jobs left as they are (--keep-tart-agent)")
	case len(res.Disabled) == 0:
		fmt.Fprintln(w, "no tart-guest-agent launchd job found")
	}
}

// Command macvz is the macvz daemon (`macvz serve`) and its admin
// subcommands.
package main

import (
	"fmt"
	"os"

	"github.com/spf13/cobra"
)

func main() {
	root := &cobra.Command{
		Use:           "macvz",
		Short:         "macvz: a Kubernetes CRI runtime whose pods are virtual machines",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.AddCommand(serveCmd(), configCmd(), versionCmd(), shimCmd(), imageCmd(), nodeCmd(), vmCmd())
	if err := root.Execute(); err != nil {
		fmt.Fprintln(os.Stderr, "macvz:", err)
		os.Exit(1)
	}
}

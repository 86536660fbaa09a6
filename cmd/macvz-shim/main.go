// Command macvz-shim is the per-VM shim (runtime/shim) as a binary of its
// own. It does exactly what `macvz shim` does and takes the same
// arguments (`macvz-shim shim --dir DIR`), so the daemon starts and
// recognises either; the daemon prefers this one when it sits next to its
// own executable. One runs per VM for the VM's whole life, and a binary
// that links only the shim keeps each one's memory small: `macvz` links
// the CRI server, the image store and containerd, whose package
// initialisation alone touches more than the whole shim needs.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"

	"github.com/macvz/macvz/runtime/shim"
)

// version is set at link time (-X main.version=...), like the daemon's.
var version = "0.1.0-dev"

func main() {
	if len(os.Args) < 2 || os.Args[1] != "shim" {
		fmt.Fprintln(os.Stderr, "usage: macvz-shim shim --dir DIR [--log-level LEVEL]  (started by macvz serve)")
		os.Exit(2)
	}
	var opts shim.RunOptions
	fs := flag.NewFlagSet("shim", flag.ExitOnError)
	fs.StringVar(&opts.Dir, "dir", "", "the sandbox state directory")
	fs.StringVar(&opts.LogLevel, "log-level", "", "log level (default: shim.json's, else info)")
	fs.Parse(os.Args[2:])
	if opts.Dir == "" || fs.NArg() != 0 {
		fmt.Fprintln(os.Stderr, "macvz-shim: --dir is required and takes no other arguments")
		os.Exit(2)
	}
	shim.Version = version
	// The shim handles SIGTERM and SIGINT itself (it stops its VM first)
	// and outlives the daemon: no context tied to either.
	if err := shim.Run(context.Background(), opts); err != nil {
		fmt.Fprintln(os.Stderr, "macvz-shim:", err)
		os.Exit(1)
	}
}

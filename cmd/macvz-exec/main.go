// Command macvz-exec is the exec helper of Linux guests: the agent starts
// each restricted process through it (runtime/agent/exechelper says
// what it does). It lives in the guest image beside the agent, at
// /usr/libexec/macvz-exec, and is not meant to be run by hand.
//
//	macvz-exec __macvz_exec [key=value ...] -- PATH ARGV...
package main

import (
	"fmt"
	"os"

	"github.com/macvz/macvz/runtime/agent/exechelper"
)

func main() {
	if len(os.Args) < 2 || os.Args[1] != exechelper.Marker {
		fmt.Fprintln(os.Stderr, "macvz-exec: the guest agent's exec helper; the agent runs it, not a user")
		os.Exit(2)
	}
	exechelper.Run(os.Args[2:])
}

// Command macvz-memvol is the node image's mount and umount for kubelet's
// memory-backed volumes (runtime/nodevm/memvol says what it does). It
// lives at /usr/libexec/macvz/bin/macvz-memvol, with mount and umount
// there as links to it, first on kubelet's PATH; the node VM's start runs
// it as `macvz-memvol restore`.
//
// It is a program of its own, not the agent called by another name,
// because it talks HTTP to the host: net/http and crypto/tls would be 3
// MB more of the agent, which every guest's kernel copies out of the
// initramfs at each boot.
package main

import (
	"os"
	"path/filepath"

	"github.com/macvz/macvz/runtime/nodevm/memvol"
)

func main() {
	os.Exit(memvol.Main(filepath.Base(os.Args[0]), os.Args[1:]))
}

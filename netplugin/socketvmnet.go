package netplugin

import (
	"fmt"
	"net"
	"os"
	"time"

	"github.com/containernetworking/cni/pkg/types"
)

// SocketVmnetPaths are where socket_vmnet's installs put its shared-mode
// socket, in the order a default picks them: /var/run/socket_vmnet (built
// from source and installed with `make install.launchd`, or MacPorts; a
// directory only root can write to) and Homebrew's on Apple silicon
// (`sudo brew services start socket_vmnet`).
var SocketVmnetPaths = []string{"/var/run/socket_vmnet", "/opt/homebrew/var/run/socket_vmnet"}

// MacNetwork is the pod network a Mac gets by default, and why.
type MacNetwork struct {
	Mode   string // ModeSocket or ModeVmnetNAT
	Socket string // ModeSocket: socket_vmnet's socket
	Why    string
}

// DefaultMacNetwork picks a Mac's default pod network: socket_vmnet's
// shared network on the first of paths that is a unix socket (isSocket
// says; IsUnixSocket on a real host), else vmnet NAT. NAT needs nothing
// installed but isolates every VM from the others (lima-vm/lima#1207):
// pods cannot reach each other or the node VM, which suits a CI host
// running one pod at a time and nothing else.
func DefaultMacNetwork(paths []string, isSocket func(string) bool) MacNetwork {
	for _, p := range paths {
		if isSocket(p) {
			return MacNetwork{Mode: ModeSocket, Socket: p, Why: fmt.Sprintf(
				"socket_vmnet's socket is at %s: its shared network lets pods and the node VM reach each other", p)}
		}
	}
	return MacNetwork{Mode: ModeVmnetNAT, Why: fmt.Sprintf(
		"no socket_vmnet socket at %v: vmnet NAT isolates pods from each other and from the node VM (right for a single-pod CI host); install and start socket_vmnet for a shared network", paths)}
}

// IsUnixSocket reports whether path is a unix socket (it does not
// connect).
func IsUnixSocket(path string) bool {
	fi, err := os.Stat(path)
	return err == nil && fi.Mode()&os.ModeSocket != 0
}

// socketVmnetStatus is the socket mode's STATUS: socket_vmnet must accept
// a connection on path, else the error names the mode, the path and how
// to start socket_vmnet (kubelet and crictl show it as the network's
// reason for not being ready).
func socketVmnetStatus(path string) *types.Error {
	why := ""
	fi, err := os.Stat(path)
	switch {
	case err != nil:
		why = err.Error()
	case fi.Mode()&os.ModeSocket == 0:
		why = "it is not a unix socket"
	default:
		conn, err := net.DialTimeout("unix", path, 2*time.Second)
		if err == nil {
			conn.Close()
			return nil
		}
		why = err.Error()
	}
	return notAvailable("mode %s: socket_vmnet does not answer on %s (%s): start it, `sudo brew services start socket_vmnet` with Homebrew, "+
		"`sudo launchctl kickstart -k system/io.github.lima-vm.socket_vmnet` for its own launchd job (README: socket_vmnet), "+
		"or set \"socket\" to where it listens; \"mode\": %q needs nothing but isolates pods from each other",
		ModeSocket, path, why, ModeVmnetNAT)
}

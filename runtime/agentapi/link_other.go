//go:build !linux

package agentapi

import "net"

// unsentBytes reports nothing where the socket cannot be asked: every
// HELLO is then sent at each retry.
func unsentBytes(net.Conn) (int, bool) { return 0, false }

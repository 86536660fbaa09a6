// Package nodevm runs the node VM: a small Linux VM, booted by the daemon
// from a node image, in which the unmodified upstream kubelet runs and
// reaches the daemon's CRI socket and streaming server through the VM's
// private agent channel (runtime/guestfwd). On a Mac this is how a Mac
// joins a cluster (kubelet cannot run on darwin); on Linux it runs under
// QEMU like every VM.
//
// The node VM is a sandbox of the daemon's own, made through the same CRI
// verbs (so through the sandbox controller) with the label Label, whose
// one container is kubelet: the host directories kubelet uses are its
// mounts, at identical paths, so every path a CRI request names is the
// same file on both sides. The CRI service hides such sandboxes and their
// containers from every caller but the Supervisor (WithInternal): kubelet
// would otherwise remove the VM it runs in as an orphan.
package nodevm

import (
	"context"
)

// Label marks the node VM's sandbox and container ("true").
const Label = "macvz.io/node-vm"

// Names of the node VM's sandbox and container.
const (
	PodName      = "macvz-node"
	PodNamespace = "macvz-system"
	PodUID       = "macvz-node-vm"
	Container    = "kubelet"
)

// GuestSocket is where kubelet in the node VM dials the daemon's CRI.
const GuestSocket = "/run/macvz/macvz.sock"

type internalKey struct{}

// WithInternal marks ctx as the Supervisor's: the CRI service shows it
// the node VM's sandbox and container.
func WithInternal(ctx context.Context) context.Context {
	return context.WithValue(ctx, internalKey{}, true)
}

// Internal reports whether ctx is the Supervisor's.
func Internal(ctx context.Context) bool {
	v, _ := ctx.Value(internalKey{}).(bool)
	return v
}

// IsNode reports whether labels mark the node VM.
func IsNode(labels map[string]string) bool { return labels[Label] == "true" }

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
	"encoding/json"
	"fmt"
	"path/filepath"
)

// Label marks the node VM's sandbox and container ("true").
const Label = "macvz.io/node-vm"

// SharesAnnotation lists, on the node VM's sandbox (JSON, an array of
// absolute paths), the host directories the VM gets as shares of their
// own: its kubelet's mounts of them are made from those, and a host mount
// made below them later (a tmpfs volume, runtime/nodevm/memvol) shows.
// Only a sandbox with Label has it read.
const SharesAnnotation = "macvz.io/node-vm-shares"

// EncodeShares and DecodeShares are SharesAnnotation's value.
func EncodeShares(paths []string) string {
	b, _ := json.Marshal(paths)
	return string(b)
}

// DecodeShares refuses anything but clean absolute paths.
func DecodeShares(v string) ([]string, error) {
	if v == "" {
		return nil, nil
	}
	var paths []string
	if err := json.Unmarshal([]byte(v), &paths); err != nil {
		return nil, fmt.Errorf("%s: %w", SharesAnnotation, err)
	}
	for _, p := range paths {
		if !filepath.IsAbs(p) || filepath.Clean(p) != p {
			return nil, fmt.Errorf("%s: %q is not a clean absolute path", SharesAnnotation, p)
		}
	}
	return paths, nil
}

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

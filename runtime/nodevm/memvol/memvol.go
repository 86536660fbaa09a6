// Package memvol makes kubelet's memory-backed volumes (Secret,
// ConfigMap, projected, downwardAPI, emptyDir with medium Memory) work
// when kubelet runs in the node VM.
//
// kubelet mounts a tmpfs for each of them with the plain mount and
// umount commands on its PATH (k8s.io/mount-utils). In the node VM such a
// mount would be the VM's own: the pod's VM, which sees the host's
// directory, would find it empty. So the node image puts this package's
// helper first on kubelet's PATH as mount and umount (cmd/macvz-memvol,
// called by those names). A tmpfs asked for below a directory shared
// from the host is asked of the host instead, over the VM's private
// channel (GuestSocket, served by Handler):
//
//   - On Linux the host mounts a real tmpfs at that path (the secret
//     never touches a disk, as with a kubelet on the host), which the
//     node VM's share shows (runtime/sandbox binds kubelet's directories
//     into the node VM as slaves), and the helper bind-mounts the path
//     onto itself in the VM, so that kubelet finds a mount point whose
//     file system is a tmpfs (9p reports the host's type), and its
//     teardown unmounts it.
//   - On macOS there is no tmpfs: the volume is a plain directory on the
//     host's disk, owned by root and readable as kubelet made it (the
//     README says so, as Kubernetes does for Windows nodes); the helper
//     mounts nothing, kubelet finds no mount point and keeps asking, and
//     its teardown removes the directory.
//
// Every other mount and umount goes to the image's own tools.
package memvol

import (
	"fmt"
	"strconv"
	"strings"
)

// GuestSocket is where the helper reaches the host in the node VM.
const GuestSocket = "/run/macvz/memvol.sock"

// HelperDir is the node image's directory of the helper's names (mount,
// umount), first on kubelet's PATH.
const HelperDir = "/usr/libexec/macvz/bin"

// Request asks the host for (POST /v1/tmpfs) or to remove (DELETE
// /v1/tmpfs) the tmpfs at Path, a volume directory kubelet made below
// one of the node VM's shares.
type Request struct {
	Path string `json:"path"`
	// SizeBytes bounds the tmpfs (kubelet's size= option; 0: the host's
	// default, half its memory).
	SizeBytes int64 `json:"sizeBytes,omitempty"`
}

// Reply says what the host did.
type Reply struct {
	// Tmpfs: the host holds a tmpfs at the path (Linux). False: the path
	// is a plain directory (macOS), or, for DELETE, nothing was mounted.
	Tmpfs bool `json:"tmpfs"`
	// Paths (GET /v1/tmpfs) are the volume directories the host holds a
	// tmpfs at: a new node VM's kubelet container binds each onto itself
	// before kubelet starts (Restore), since kubelet, finding its pods'
	// volumes again, does not mount them again, and tears down a volume
	// it sees no mount point at as a plain directory.
	Paths []string `json:"paths,omitempty"`
}

// RestoreName is the helper's name for Restore (macvz-memvol restore).
const RestoreName = "macvz-memvol"

// sizeOption is the size= of tmpfs options, in bytes (a percentage, or
// none, is 0: the host's default).
func sizeOption(opts string) (int64, error) {
	for _, o := range strings.Split(opts, ",") {
		v, ok := strings.CutPrefix(o, "size=")
		if !ok || strings.HasSuffix(v, "%") {
			continue
		}
		mult := int64(1)
		if n := len(v); n > 0 {
			switch v[n-1] {
			case 'k', 'K':
				mult = 1 << 10
			case 'm', 'M':
				mult = 1 << 20
			case 'g', 'G':
				mult = 1 << 30
			}
			if mult > 1 {
				v = v[:n-1]
			}
		}
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil || n < 0 || n > (1<<62)/mult {
			return 0, fmt.Errorf("tmpfs option %q: not a size", o)
		}
		return n * mult, nil
	}
	return 0, nil
}

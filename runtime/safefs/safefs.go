// Package safefs does path operations in trees that someone else can
// write: a sandbox's share (the guest writes it through 9p or virtiofs)
// and the directories volumes are bound into. Nothing here follows a
// symbolic link, leaves the tree it was given, or crosses a mount point:
// a guest that plants a symlink where the host is about to create,
// mount or delete something gets an error, never a host path of its
// choosing, and a missed unmount can never turn a removal into the
// deletion of a volume's contents.
package safefs

import (
	"errors"
	"fmt"

	"github.com/containerd/errdefs"
)

// ErrMountPoint is returned by RemoveAll when it meets a mount point:
// it never removes anything on the other side.
var ErrMountPoint = errors.New("is a mount point")

// ErrSymlink is returned when a path beneath a root goes through a
// symbolic link.
var ErrSymlink = errors.New("goes through a symbolic link")

func mountPointError(path string) error {
	return fmt.Errorf("refusing to remove %s: it %w (an unmount was missed; nothing below it was touched): %w", path, ErrMountPoint, errdefs.ErrFailedPrecondition)
}

// planted is the error for something found where the host was about to
// make or use a path in a tree another party writes (the guest, through
// the share): FailedPrecondition, for the caller to report, never to
// work around.
func planted(path string, what error) error {
	return fmt.Errorf("%s %w (made by the guest? nothing was followed): %w", path, what, errdefs.ErrFailedPrecondition)
}

//go:build !linux && !darwin

package snapshotter

import (
	"errors"
	"os"
)

// errNoReflink: this OS has no reflink call we use; every clone is a copy.
var errNoReflink = errors.New("reflink is not implemented on this OS")

func reflink(src, dst string) error {
	return &os.PathError{Op: "reflink", Path: dst, Err: errNoReflink}
}

func reflinkUnsupported(err error) bool { return errors.Is(err, errNoReflink) }

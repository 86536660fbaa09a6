//go:build !linux

package qemu

import (
	"errors"
	"os"
)

// memfdRAM: no memfd here; a save writes the RAM into the state stream.
const memfdRAM = false

func newRAMFile(int64) (*os.File, error) {
	return nil, errors.New("no memfd on this platform")
}

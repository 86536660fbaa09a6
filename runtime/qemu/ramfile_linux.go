package qemu

import (
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// memfdRAM: a savable cold boot keeps its guest RAM in a memfd
// (newRAMFile), which SaveRAMFile reads.
const memfdRAM = true

// newRAMFile is an anonymous memory file of size bytes for a guest's RAM:
// QEMU maps it shared (through /proc/self/fd/<ramFD>), the machine keeps
// its own descriptor to read the RAM when it saves.
func newRAMFile(size int64) (*os.File, error) {
	fd, err := unix.MemfdCreate("macvz-guest-ram", unix.MFD_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("creating the guest RAM's memfd: %w", err)
	}
	f := os.NewFile(uintptr(fd), "macvz-guest-ram")
	if err := f.Truncate(size); err != nil {
		f.Close()
		return nil, fmt.Errorf("sizing the guest RAM's memfd: %w", err)
	}
	return f, nil
}

package shim

import (
	"github.com/macvz/macvz/runtime/qemu"
	"github.com/macvz/macvz/runtime/vm"
)

func init() {
	RegisterBackend("qemu", Backend{
		New:         func() (vm.Driver, error) { return qemu.New(), nil },
		LinkFraming: true, // virtio-serial
		PIDFiles:    []string{qemu.PIDFile},
	})
}

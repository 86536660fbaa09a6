package shim

import (
	"github.com/macvz/macvz/runtime/vm"
	"github.com/macvz/macvz/runtime/vz"
)

func init() {
	RegisterBackend("vz", Backend{
		New:         func() (vm.Driver, error) { return vz.New(), nil },
		LinkFraming: false, // vsock: a connection per dial
	})
}

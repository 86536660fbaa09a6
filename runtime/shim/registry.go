package shim

import (
	"fmt"
	"slices"
	"sync"

	"github.com/containerd/errdefs"

	"github.com/macvz/macvz/runtime/vm"
)

// Backend is a VM backend a shim can run.
type Backend struct {
	// New returns the backend's driver.
	New func() (vm.Driver, error)
	// LinkFraming says the connection Machine.DialAgent returns is a raw
	// byte stream without connection boundaries (QEMU's virtio-serial
	// port), over which ttrpc goes in runtime/agentapi's link framing
	// (agentapi.LinkClient). Without it (vsock, unix sockets) the shim
	// speaks plain ttrpc on it.
	LinkFraming bool
	// PIDFiles are files in the sandbox directory holding the pids of
	// VM processes the backend starts (Kill kills them after checking
	// that they run in that directory).
	PIDFiles []string
}

var backends = struct {
	sync.Mutex
	m map[string]Backend
}{m: map[string]Backend{}}

// RegisterBackend makes a backend available to shims by name. The
// platform's backends register themselves (drivers_<os>.go); tests
// register fakes. Registering a name again replaces it.
func RegisterBackend(name string, b Backend) {
	if name == "" || b.New == nil {
		panic("shim: RegisterBackend needs a name and a New function")
	}
	backends.Lock()
	defer backends.Unlock()
	backends.m[name] = b
}

// Backends lists the registered backend names, sorted.
func Backends() []string {
	backends.Lock()
	defer backends.Unlock()
	names := make([]string, 0, len(backends.m))
	for n := range backends.m {
		names = append(names, n)
	}
	slices.Sort(names)
	return names
}

// vmPIDFiles are the PIDFiles of every registered backend.
func vmPIDFiles() []string {
	backends.Lock()
	defer backends.Unlock()
	var files []string
	for _, b := range backends.m {
		for _, f := range b.PIDFiles {
			if !slices.Contains(files, f) {
				files = append(files, f)
			}
		}
	}
	return files
}

func lookupBackend(name string) (Backend, error) {
	backends.Lock()
	b, ok := backends.m[name]
	backends.Unlock()
	if !ok {
		return Backend{}, fmt.Errorf("%w: unknown VM backend %q (this build has %v)", errdefs.ErrInvalidArgument, name, Backends())
	}
	return b, nil
}

// Restorable asks the driver of backend whether a VM of spec could be
// restored from a state saved from it (vm.Driver.Restorable): nil when
// it could, else why not (an unknown backend among the reasons).
func Restorable(backend string, spec *vm.Spec) error {
	b, err := lookupBackend(backend)
	if err != nil {
		return err
	}
	d, err := b.New()
	if err != nil {
		return err
	}
	return d.Restorable(spec)
}

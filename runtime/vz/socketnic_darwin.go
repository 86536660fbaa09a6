//go:build darwin

package vz

import (
	"context"
	"io"
	"log/slog"
	"time"

	"github.com/Code-Hex/vz/v3"

	"github.com/macvz/macvz/runtime/vz/socketvmnet"
)

// socketAttachment attaches a NIC to socket_vmnet's stream socket at path:
// the VM gets one end of a datagram socketpair, and a forwarder relays its
// frames to and from the stream (package socketvmnet). The closers are
// the machine's to close when the VM ends: the forwarder first (it closes
// its end and the stream), then the VM's end.
func socketAttachment(path string) (vz.NetworkDeviceAttachment, []io.Closer, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	vmEnd, fwd, err := socketvmnet.Dial(ctx, path)
	if err != nil {
		return nil, nil, err
	}
	a, err := vz.NewFileHandleNetworkDeviceAttachment(vmEnd)
	if err != nil {
		fwd.Close()
		vmEnd.Close()
		return nil, nil, err
	}
	go func() {
		// Ends with the forwarder, at the latest when the machine closes it.
		<-fwd.Done()
		if err := fwd.Err(); err != nil {
			slog.Warn("the connection to socket_vmnet ended: the VM's NIC is cut off until the pod is recreated", "socket", path, "err", err, "frames", fwd.Stats())
		}
	}()
	return a, []io.Closer{fwd, vmEnd}, nil
}

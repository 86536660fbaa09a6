package nodevm

import (
	"context"
	"net"
	"os"
	"path"
	"path/filepath"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/macvz/macvz/runtime/agentapi"
	"github.com/macvz/macvz/runtime/guestfwd"
)

// The daemon's device plugin (cri/deviceplugin) shows kubelet the VM
// slots. kubelet's device-plugin directory is in the node VM (on its
// tmpfs root dir), and unix sockets do not cross a share, so the plugin
// reaches kubelet's sockets through the VM's agent (DialKubelet), and
// the Supervisor serves each plugin's socket in that directory from the
// host (Config.DevicePlugins).

// DialKubelet connects to a socket of the running node VM's kubelet:
// agentapi.KubeletRegistrationSocket or KubeletPodResourcesSocket (the
// agent refuses every other path). Unavailable while no node VM runs.
func (s *Supervisor) DialKubelet(ctx context.Context, path string) (net.Conn, error) {
	st := s.Status()
	if st.State != "running" || st.SandboxID == "" {
		return nil, status.Errorf(codes.Unavailable, "no node VM runs (%s)", st.State)
	}
	agent, err := s.rt.Agent(WithInternal(ctx), st.SandboxID)
	if err != nil {
		return nil, err
	}
	c, err := agentapi.DialGuest(ctx, agent, "unix:"+path)
	if err != nil {
		return nil, err
	}
	return tunnelConn{c, path}, nil
}

// tunnelConn is a tunnel to a guest socket as the net.Conn gRPC's
// transport wants. It has no deadlines (gRPC sets them only when it
// closes the connection, and ignores the error).
type tunnelConn struct {
	*agentapi.ForwardConn
	path string
}

func (c tunnelConn) LocalAddr() net.Addr            { return tunnelAddr("host") }
func (c tunnelConn) RemoteAddr() net.Addr           { return tunnelAddr("node-vm:" + c.path) }
func (tunnelConn) SetDeadline(time.Time) error      { return os.ErrNoDeadline }
func (tunnelConn) SetReadDeadline(time.Time) error  { return os.ErrNoDeadline }
func (tunnelConn) SetWriteDeadline(time.Time) error { return os.ErrNoDeadline }

type tunnelAddr string

func (a tunnelAddr) Network() string { return "macvz-agent" }
func (a tunnelAddr) String() string  { return string(a) }

// devicePluginForwards serve each of Config.DevicePlugins in kubelet's
// device-plugin directory in the VM, under its own name: kubelet dials
// the endpoint a plugin registers in that directory. The agent makes
// such a socket again when kubelet, starting, deletes it.
func (s *Supervisor) devicePluginForwards() []guestfwd.Forward {
	var fwds []guestfwd.Forward
	for _, sock := range s.cfg.DevicePlugins {
		fwds = append(fwds, guestfwd.Forward{
			Listen: "unix:" + path.Join(agentapi.KubeletPluginDir, filepath.Base(sock)),
			Dial: func(ctx context.Context) (net.Conn, error) {
				var d net.Dialer
				return d.DialContext(ctx, "unix", sock)
			},
		})
	}
	return fwds
}

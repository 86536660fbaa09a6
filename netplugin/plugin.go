package netplugin

import (
	"errors"
	"fmt"
	"runtime"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/cni/pkg/version"
)

// VersionInfo is the CNI spec versions the plugin speaks. CHECK needs
// 0.4.0 or later, STATUS and GC 1.1.0.
var VersionInfo = version.PluginSupports("0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")

// About is printed when the binary runs without CNI_COMMAND.
const About = "macvz-net: the macvz CNI plugin (VM sandboxes: bridge-tap on Linux; vmnet-nat, vmnet-bridged, socket on macOS)"

// handler is one mode's implementation of the CNI verbs.
type handler interface {
	add(args *skel.CmdArgs, c *NetConf) (*current.Result, error)
	del(args *skel.CmdArgs, c *NetConf) error
	check(args *skel.CmdArgs, c *NetConf) error
	status(args *skel.CmdArgs, c *NetConf) error
	gc(args *skel.CmdArgs, c *NetConf) error
}

// handlerFor returns the platform's implementation of c.Mode (see the
// mode_*.go files), or a configuration error naming where it runs.
func handlerFor(c *NetConf) (handler, error) {
	if h, ok := platformModes[c.Mode]; ok {
		return h, nil
	}
	where := "macOS"
	if c.Mode == ModeBridgeTap {
		where = "Linux"
	}
	return nil, confErr("mode %s is only available on %s (this is %s)", c.Mode, where, runtime.GOOS)
}

func load(args *skel.CmdArgs) (*NetConf, handler, error) {
	c, err := LoadConf(args.StdinData)
	if err != nil {
		return nil, nil, err
	}
	h, err := handlerFor(c)
	if err != nil {
		return nil, nil, err
	}
	return c, h, nil
}

// Funcs are the plugin's CNI verbs for skel.
func Funcs() skel.CNIFuncs {
	return skel.CNIFuncs{
		Add: func(args *skel.CmdArgs) error {
			c, h, err := load(args)
			if err != nil {
				return err
			}
			res, err := h.add(args, c)
			if err != nil {
				return err
			}
			return types.PrintResult(res, c.CNIVersion)
		},
		Del: func(args *skel.CmdArgs) error {
			c, h, err := load(args)
			if err != nil {
				return err
			}
			return h.del(args, c)
		},
		Check: func(args *skel.CmdArgs) error {
			c, h, err := load(args)
			if err != nil {
				return err
			}
			if c.PrevResult == nil {
				return confErr("CHECK needs prevResult (the result of ADD)")
			}
			return h.check(args, c)
		},
		Status: func(args *skel.CmdArgs) error {
			c, h, err := load(args)
			if err != nil {
				return err
			}
			if err := h.status(args, c); err != nil {
				var te *types.Error
				if errors.As(err, &te) {
					return te
				}
				return types.NewError(types.ErrPluginNotAvailable, err.Error(), "")
			}
			return nil
		},
		GC: func(args *skel.CmdArgs) error {
			c, h, err := load(args)
			if err != nil {
				return err
			}
			if !c.hasValid {
				return confErr("GC needs cni.dev/valid-attachments (the runtime must send the list, even empty)")
			}
			return h.gc(args, c)
		},
	}
}

// Main runs the plugin (the whole of cmd/macvz-net).
func Main() {
	skel.PluginMainFuncs(Funcs(), VersionInfo, About)
}

// notAvailable is a STATUS failure: CNI code 50.
func notAvailable(format string, args ...any) *types.Error {
	return types.NewError(types.ErrPluginNotAvailable, fmt.Sprintf(format, args...), "")
}

// guestInterface is the result's entry for the guest's NIC.
func guestInterface(args *skel.CmdArgs, c *NetConf) *current.Interface {
	return &current.Interface{
		Name:    args.IfName,
		Mac:     c.GuestMAC(args.ContainerID, args.IfName),
		Mtu:     c.MTU,
		Sandbox: args.Netns,
	}
}

// checkGuestMAC compares prevResult's guest interface with ours.
func checkGuestMAC(args *skel.CmdArgs, c *NetConf) (*current.Result, error) {
	prev, err := current.NewResultFromResult(c.PrevResult)
	if err != nil {
		return nil, types.NewError(types.ErrDecodingFailure, "prevResult: "+err.Error(), "")
	}
	want := c.GuestMAC(args.ContainerID, args.IfName)
	for _, ifc := range prev.Interfaces {
		if ifc.Name == args.IfName && ifc.Sandbox != "" {
			if ifc.Mac != want {
				return nil, fmt.Errorf("prevResult: interface %s has MAC %s, want %s", ifc.Name, ifc.Mac, want)
			}
			return prev, nil
		}
	}
	return nil, fmt.Errorf("prevResult has no guest interface %s", args.IfName)
}

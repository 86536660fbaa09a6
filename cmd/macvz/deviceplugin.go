package main

import (
	"log/slog"

	"github.com/macvz/macvz/cri"
	"github.com/macvz/macvz/cri/config"
	"github.com/macvz/macvz/cri/deviceplugin"
)

// devicePlugin starts the VM-slot device plugin ([kubelet]
// device_plugin) for a kubelet on this host, over svc's slots, once the
// CRI serves; the function it returns stops it. macOS slots are a resource only where macOS guests
// run (backend vz).
func devicePlugin(cfg *config.Config) func(*cri.Service) func() {
	return func(svc *cri.Service) func() {
		// With the node VM, kubelet is in it, and its plugin is the node
		// VM's (cri/node.go): the slots are shown to one kubelet only.
		if !cfg.Kubelet.DevicePlugin || cfg.Node.Enabled {
			return nil
		}
		var res []deviceplugin.Resource
		if cfg.Backend == "vz" {
			res = append(res, deviceplugin.Resource{Name: deviceplugin.MacOSResource, OS: "darwin"})
		}
		res = append(res, deviceplugin.Resource{Name: deviceplugin.LinuxResource, OS: "linux"})
		m, err := deviceplugin.Start(deviceplugin.Options{Dir: cfg.Kubelet.DevicePluginDir, Resources: res, Slots: svc})
		if err != nil {
			// The CRI serves on: kubelet schedules as before, without
			// the slots.
			slog.Warn("device plugin not started", "err", err)
			return nil
		}
		if r := m.Resources(); len(r) > 0 {
			slog.Info("device plugin started", "resources", r, "dir", cfg.Kubelet.DevicePluginDir)
		}
		return m.Stop
	}
}

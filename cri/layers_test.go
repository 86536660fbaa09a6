package cri

import (
	"os/exec"
	"strings"
	"testing"
)

// TestLayers holds the import rules CONTRIBUTING.md draws: which package
// may import which. A new import that breaks one fails here, not in a
// review.
func TestLayers(t *testing.T) {
	const mod = "github.com/macvz/macvz/"
	// forbidden lists, per package (with its subpackages' deps), the
	// import path prefixes none of its dependencies may have.
	forbidden := map[string][]string{
		// The controller takes a typed spec, never CRI protobuf, so a VM
		// that is not a pod sandbox boots through it too.
		"runtime/sandbox": {mod + "cri", "k8s.io/cri-api"},
		// Images, disks and the network know nothing of the runtime.
		"vmimage/...":   {mod + "cri", mod + "runtime/", mod + "netplugin"},
		"snapshotter":   {mod + "cri", mod + "runtime/", mod + "vmimage", mod + "netplugin"},
		"netplugin/...": {mod + "cri", mod + "runtime/sandbox", mod + "runtime/shim", mod + "vmimage"},
		// The shim runs VMs; it does not know sandboxes or the CRI.
		"runtime/shim": {mod + "cri", mod + "runtime/sandbox", mod + "vmimage", "k8s.io/cri-api"},
		// The guest agent runs in the guest: only its protocol.
		"runtime/agent": {mod + "cri", mod + "runtime/shim", mod + "runtime/sandbox", mod + "runtime/qemu", mod + "runtime/vz", mod + "vmimage", mod + "snapshotter", mod + "netplugin"},
		// The device plugin speaks kubelet's API over a small interface.
		"cri/deviceplugin": {mod + "runtime/", mod + "vmimage", mod + "netplugin", mod + "snapshotter", "k8s.io/cri-api"},
		// Drivers and state are leaves of the runtime.
		"runtime/vm":    {mod + "cri", mod + "runtime/shim", mod + "runtime/sandbox"},
		"runtime/store": {mod + "cri", mod + "runtime/shim", mod + "runtime/sandbox"},
	}
	for pkg, bad := range forbidden {
		out, err := exec.Command("go", "list", "-deps", "./../"+pkg).Output()
		if err != nil {
			t.Fatalf("go list -deps %s: %v", pkg, err)
		}
		for _, dep := range strings.Fields(string(out)) {
			for _, b := range bad {
				if strings.HasPrefix(dep, b) {
					t.Errorf("%s depends on %s (not allowed: %s)", pkg, dep, b)
				}
			}
		}
	}
	// Nothing but the daemon's command imports cri.
	out, err := exec.Command("go", "list", "-f", `{{.ImportPath}} {{join .Imports " "}}`, "./../...").Output()
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		f := strings.Fields(line)
		if len(f) == 0 || f[0] == mod+"cmd/macvz" || strings.HasPrefix(f[0], mod+"cri") {
			continue
		}
		for _, imp := range f[1:] {
			if imp == mod+"cri" || imp == mod+"cri/config" {
				t.Errorf("%s imports %s: only cmd/macvz may", f[0], imp)
			}
		}
	}
}

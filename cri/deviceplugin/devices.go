package deviceplugin

import (
	"fmt"
	"path"
	"sort"
	"strings"

	pluginapi "k8s.io/kubelet/pkg/apis/deviceplugin/v1beta1"
)

// Holder is a sandbox whose VM holds a slot, with its pod's identity as
// the sandbox's metadata gives it (crictl pods have one too).
type Holder struct {
	SandboxID       string
	Namespace, Name string
}

func (h Holder) pod() string { return h.Namespace + "/" + h.Name }

// allocation is what kubelet's pod-resources API says of one resource:
// the pods ("namespace/name") that were allocated devices of it, and
// those devices.
type allocation struct {
	pods map[string]bool
	ids  map[string]bool
}

// deviceID is the ID of slot device n (from 1) of resource:
// "macos-vm-1" for macvz.io/macos-vm. It is a token kubelet counts, not
// the slot the VM gets: the controller gives a booting VM the lowest
// free slot whatever device kubelet picked.
func deviceID(resource string, n int) string {
	return fmt.Sprintf("%s-%d", path.Base(resource), n)
}

// devices are the limit devices of resource given the slot holders.
// A holder counts as kubelet's when alloc is nil (kubelet's allocations
// are not known: every holder is taken for kubelet's) or when its pod
// was allocated a device of resource; every other holder (a crictl pod,
// a pod that did not ask for the resource) makes one device Unhealthy,
// the highest-numbered ones kubelet has not allocated first, so
// kubelet's allocatable is the slots minus those holders. unknown are
// the holders that did.
func devices(resource string, limit int, holders []Holder, alloc *allocation) (devs []*pluginapi.Device, unknown []Holder) {
	for _, h := range holders {
		if alloc != nil && !alloc.pods[h.pod()] {
			unknown = append(unknown, h)
		}
	}
	bad := len(unknown)
	health := make([]string, limit+1)
	for n := limit; n >= 1; n-- {
		health[n] = pluginapi.Healthy
		if bad > 0 && (alloc == nil || !alloc.ids[deviceID(resource, n)]) {
			health[n] = pluginapi.Unhealthy
			bad--
		}
	}
	for n := 1; n <= limit; n++ {
		devs = append(devs, &pluginapi.Device{ID: deviceID(resource, n), Health: health[n]})
	}
	return devs, unknown
}

// sameDevices is whether a and b list the same devices with the same
// health, in order.
func sameDevices(a, b []*pluginapi.Device) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i].ID != b[i].ID || a[i].Health != b[i].Health {
			return false
		}
	}
	return true
}

// describe names holders for a log line: "ns/name (id prefix)".
func describe(hs []Holder) string {
	var out []string
	for _, h := range hs {
		out = append(out, fmt.Sprintf("%s (%.12s)", h.pod(), h.SandboxID))
	}
	sort.Strings(out)
	return strings.Join(out, ", ")
}

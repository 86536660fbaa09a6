//go:build linux

package netplugin

// Linux runs bridge-tap; the vmnet modes are macOS-only.
var platformModes = map[string]handler{
	ModeBridgeTap: bridgeTap{},
}

//go:build !linux && !darwin

package netplugin

// No mode runs elsewhere: every ADD is a configuration error saying where
// the mode runs.
var platformModes = map[string]handler{}

//go:build !linux

package netplugin

import "fmt"

// CreateTap: tap devices are the Linux mode's (bridgeTap).
func CreateTap(name string) error {
	return fmt.Errorf("tap %s: tap devices are Linux-only", name)
}

// DeleteTap: there are none to delete.
func DeleteTap(name string) error { return nil }

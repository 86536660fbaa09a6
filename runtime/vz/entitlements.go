package vz

import (
	"bytes"
	"fmt"

	"github.com/containerd/errdefs"
	"howett.net/plist"
)

// Entitlements Virtualization.framework checks in the process that
// creates VMs (the shim).
const (
	EntitlementVirtualization = "com.apple.security.virtualization"
	EntitlementNetworking     = "com.apple.vm.networking" // bridged NICs
)

// trueKeys returns the keys of an XML property list's top-level dict
// whose value is <true/> (what `codesign -d --entitlements - --xml`
// prints). Empty input (an unsigned binary, or one signed without
// entitlements) has none.
func trueKeys(b []byte) (map[string]bool, error) {
	out := map[string]bool{}
	if len(bytes.TrimSpace(b)) == 0 {
		return out, nil
	}
	var m map[string]any
	if _, err := plist.Unmarshal(b, &m); err != nil {
		return nil, fmt.Errorf("entitlements: %w", err)
	}
	for k, v := range m {
		if v == true {
			out[k] = true
		}
	}
	return out, nil
}

// checkEntitlements says what binary (whose entitlements plist is
// plist) lacks to host VMs, with what to do about it.
func checkEntitlements(binary string, plist []byte, bridged bool) error {
	keys, err := trueKeys(plist)
	if err != nil {
		return fmt.Errorf("reading the entitlements of %s: %w", binary, err)
	}
	if !keys[EntitlementVirtualization] {
		return fmt.Errorf("%s lacks the %s entitlement, without which Virtualization.framework creates no VM: run `make sign` (codesign --entitlements cmd/macvz-shim/macvz.entitlements): %w",
			binary, EntitlementVirtualization, errdefs.ErrFailedPrecondition)
	}
	if bridged && !keys[EntitlementNetworking] {
		return fmt.Errorf("%s lacks the %s entitlement that bridged networking needs: make sign ENTITLEMENTS=cmd/macvz-shim/macvz-bridged.entitlements: %w",
			binary, EntitlementNetworking, errdefs.ErrFailedPrecondition)
	}
	return nil
}

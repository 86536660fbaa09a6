package vz

import (
	"bytes"
	"fmt"
	"strings"

	"github.com/containerd/errdefs"
	"howett.net/plist"
)

// Entitlements Virtualization.framework checks in the process that
// creates VMs (the shim).
const (
	EntitlementVirtualization = "com.apple.security.virtualization"
	// EntitlementNetworking is what the framework's bridged attachment
	// needs. It is restricted: Apple grants it to a developer's
	// provisioning profile, and macOS kills a process whose ad-hoc (or
	// unprovisioned) signature claims it at exec. `make sign` never
	// adds it; bridged pods use socket_vmnet's bridged mode (the
	// "socket" network mode) instead.
	EntitlementNetworking = "com.apple.vm.networking"
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
// plist, and whose signature codesign -dv describes as info) lacks to
// host VMs, or what in its signature stops it, with what to do about it.
func checkEntitlements(binary string, plist []byte, info string, bridged bool) error {
	keys, err := trueKeys(plist)
	if err != nil {
		return fmt.Errorf("reading the entitlements of %s: %w", binary, err)
	}
	if !keys[EntitlementVirtualization] {
		return fmt.Errorf("%s lacks the %s entitlement, without which Virtualization.framework creates no VM: run `make sign` (codesign --entitlements cmd/macvz-shim/macvz.entitlements): %w",
			binary, EntitlementVirtualization, errdefs.ErrFailedPrecondition)
	}
	if keys[EntitlementNetworking] && adHoc(info) {
		return fmt.Errorf("%s claims the restricted %s entitlement with an ad-hoc signature, and macOS kills such a process at exec: sign it again with `make sign` (which leaves that entitlement out) and use socket_vmnet's bridged mode for bridged pods: %w",
			binary, EntitlementNetworking, errdefs.ErrFailedPrecondition)
	}
	if bridged && !keys[EntitlementNetworking] {
		return fmt.Errorf("%s lacks the %s entitlement that the vmnet-bridged mode needs; Apple grants it only to a developer's provisioning profile, so bridge pods through socket_vmnet's bridged mode instead (macvz-net \"mode\": \"socket\" on its bridged socket, see the README): %w",
			binary, EntitlementNetworking, errdefs.ErrFailedPrecondition)
	}
	return nil
}

// adHoc reports whether codesign -dv's description of a signature says
// it is ad hoc: "Signature=adhoc", or "adhoc" among the CodeDirectory's
// flags (as in "flags=0x20002(adhoc,linker-signed)").
func adHoc(info string) bool {
	for _, line := range strings.Split(info, "\n") {
		line = strings.TrimSpace(line)
		if line == "Signature=adhoc" {
			return true
		}
		if strings.HasPrefix(line, "CodeDirectory ") {
			if _, flags, ok := strings.Cut(line, " flags="); ok {
				if _, names, ok := strings.Cut(flags, "("); ok {
					names, _, _ = strings.Cut(names, ")")
					for _, n := range strings.Split(names, ",") {
						if n == "adhoc" {
							return true
						}
					}
				}
			}
		}
	}
	return false
}

package vz

import (
	"strings"
	"testing"

	"github.com/containerd/errdefs"
)

// What `codesign -d --entitlements - --xml` prints for a binary signed
// with cmd/macvz-shim/macvz-bridged.entitlements (one line, no
// indentation, as codesign writes it).
const signedBridged = `<?xml version="1.0" encoding="UTF-8"?><!DOCTYPE plist PUBLIC "-//Apple//DTD PLIST 1.0//EN" "https://www.apple.com/DTDs/PropertyList-1.0.dtd"><plist version="1.0"><dict><key>com.apple.security.virtualization</key><true/><key>com.apple.vm.networking</key><true/></dict></plist>`

const signedOther = `<?xml version="1.0" encoding="UTF-8"?><plist version="1.0"><dict><key>com.apple.security.get-task-allow</key><true/><key>com.apple.security.virtualization</key><false/></dict></plist>`

func TestCheckEntitlements(t *testing.T) {
	if err := checkEntitlements("/usr/local/bin/macvz-shim", []byte(signedBridged), true); err != nil {
		t.Errorf("bridged-signed binary: %v", err)
	}
	only := strings.Replace(signedBridged, "<key>com.apple.vm.networking</key><true/>", "", 1)
	if err := checkEntitlements("shim", []byte(only), false); err != nil {
		t.Errorf("signed for NAT: %v", err)
	}
	if err := checkEntitlements("shim", []byte(only), true); !errdefs.IsFailedPrecondition(err) || !strings.Contains(err.Error(), EntitlementNetworking) {
		t.Errorf("bridged without the networking entitlement: %v", err)
	}
	for name, plist := range map[string]string{"unsigned": "", "other entitlements, virtualization false": signedOther} {
		err := checkEntitlements("shim", []byte(plist), false)
		if !errdefs.IsFailedPrecondition(err) || !strings.Contains(err.Error(), "make sign") {
			t.Errorf("%s: %v", name, err)
		}
	}
	if err := checkEntitlements("shim", []byte("<plist><dict><key>x</key>"), false); err == nil {
		t.Error("truncated plist accepted")
	}
}

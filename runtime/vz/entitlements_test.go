package vz

import (
	"strings"
	"testing"

	"github.com/containerd/errdefs"
)

// What `codesign -d --entitlements - --xml` prints for a binary signed
// with both the virtualization and the networking entitlement (one line,
// no indentation, as codesign writes it).
const signedBridged = `<?xml version="1.0" encoding="UTF-8"?><!DOCTYPE plist PUBLIC "-//Apple//DTD PLIST 1.0//EN" "https://www.apple.com/DTDs/PropertyList-1.0.dtd"><plist version="1.0"><dict><key>com.apple.security.virtualization</key><true/><key>com.apple.vm.networking</key><true/></dict></plist>`

const signedOther = `<?xml version="1.0" encoding="UTF-8"?><plist version="1.0"><dict><key>com.apple.security.get-task-allow</key><true/><key>com.apple.security.virtualization</key><false/></dict></plist>`

// What `codesign -d -v` prints on stderr about an ad-hoc signature and
// about one made with an identity.
const (
	infoAdHoc    = "Executable=/usr/local/bin/macvz-shim\nIdentifier=macvz-shim\nFormat=Mach-O thin (arm64)\nCodeDirectory v=20400 size=1234 flags=0x2(adhoc) hashes=30+7 location=embedded\nSignature=adhoc\nInfo.plist=not bound\nTeamIdentifier=not set\n"
	infoIdentity = "Executable=/usr/local/bin/macvz-shim\nIdentifier=io.macvz.shim\nCodeDirectory v=20500 size=1234 flags=0x10000(runtime) hashes=30+7 location=embedded\nSignature size=9000\nAuthority=Developer ID Application: Example (ABCDE12345)\nTeamIdentifier=ABCDE12345\n"
)

func TestCheckEntitlements(t *testing.T) {
	if err := checkEntitlements("/usr/local/bin/macvz-shim", []byte(signedBridged), infoIdentity, true); err != nil {
		t.Errorf("bridged-signed binary with an identity: %v", err)
	}
	// The restricted entitlement on an ad-hoc signature: killed at exec.
	if err := checkEntitlements("shim", []byte(signedBridged), infoAdHoc, false); !errdefs.IsFailedPrecondition(err) ||
		!strings.Contains(err.Error(), "ad-hoc") || !strings.Contains(err.Error(), "socket_vmnet") {
		t.Errorf("networking entitlement, ad hoc: %v", err)
	}
	// A linker's ad-hoc signature says so only in its flags.
	if !adHoc("CodeDirectory v=20400 size=100 flags=0x20002(adhoc,linker-signed) hashes=1+0 location=embedded\n") || adHoc(infoIdentity) {
		t.Error("adHoc misreads codesign -dv")
	}
	only := strings.Replace(signedBridged, "<key>com.apple.vm.networking</key><true/>", "", 1)
	if err := checkEntitlements("shim", []byte(only), infoAdHoc, false); err != nil {
		t.Errorf("signed ad hoc as make sign does: %v", err)
	}
	if err := checkEntitlements("shim", []byte(only), infoAdHoc, true); !errdefs.IsFailedPrecondition(err) ||
		!strings.Contains(err.Error(), EntitlementNetworking) || !strings.Contains(err.Error(), "socket_vmnet") {
		t.Errorf("bridged without the networking entitlement: %v", err)
	}
	for name, plist := range map[string]string{"unsigned": "", "other entitlements, virtualization false": signedOther} {
		err := checkEntitlements("shim", []byte(plist), "", false)
		if !errdefs.IsFailedPrecondition(err) || !strings.Contains(err.Error(), "make sign") {
			t.Errorf("%s: %v", name, err)
		}
	}
	if err := checkEntitlements("shim", []byte("<plist><dict><key>x</key>"), "", false); err == nil {
		t.Error("truncated plist accepted")
	}
}

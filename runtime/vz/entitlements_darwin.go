//go:build darwin

package vz

import (
	"bytes"
	"fmt"
	"os/exec"
)

// CheckEntitlements reports why binary cannot host VMs, if it cannot:
// its code signature must carry the virtualization entitlement (and the
// networking one for bridged NICs), and must not claim the restricted
// networking one with an ad-hoc signature (macOS kills it at exec). It
// asks codesign(1), which prints a binary's entitlements as an XML plist
// on stdout and, with -v, the signature's description ("Signature=adhoc")
// on stderr.
func CheckEntitlements(binary string, bridged bool) error {
	var out, errb bytes.Buffer
	cmd := exec.Command("/usr/bin/codesign", "-d", "-v", "--entitlements", "-", "--xml", binary)
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		// An unsigned binary: codesign fails ("code object is not signed").
		return checkEntitlements(binary, nil, "", bridged)
	}
	if err := checkEntitlements(binary, out.Bytes(), errb.String(), bridged); err != nil {
		return fmt.Errorf("%w (codesign: %s)", err, bytes.TrimSpace(errb.Bytes()))
	}
	return nil
}

//go:build !darwin

package sandbox

// hostRelease is "" off macOS: a QEMU state is bound to the QEMU binary
// and machine type, which the checkpoint's VM key covers.
func hostRelease(string) string { return "" }

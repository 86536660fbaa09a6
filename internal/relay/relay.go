// Package relay copies two connections into each other.
package relay

import "io"

// Both copies a into b and b into a until both directions end. When
// one direction ends its EOF is passed on with CloseWrite where the
// destination has one (the other direction may still be talking), else
// the destination is closed. It closes neither connection at the end.
func Both(a, b io.ReadWriteCloser) {
	done := make(chan struct{}, 2)
	pipe := func(dst, src io.ReadWriteCloser) {
		_, _ = io.Copy(dst, src)
		if cw, ok := dst.(interface{ CloseWrite() error }); ok {
			_ = cw.CloseWrite()
		} else {
			dst.Close()
		}
		done <- struct{}{}
	}
	go pipe(a, b)
	go pipe(b, a)
	<-done
	<-done
}

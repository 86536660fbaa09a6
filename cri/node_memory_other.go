//go:build !linux && !darwin

package cri

// hostMemoryBytes is unknown here: the node VM gets the daemon's default
// size unless [node] memory_bytes says.
func hostMemoryBytes() int64 { return 0 }

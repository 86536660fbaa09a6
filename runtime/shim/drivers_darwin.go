package shim

// The vz backend (runtime/vz) registers here once it exists:
//
//	RegisterBackend("vz", Backend{New: ..., LinkFraming: false}) // vsock

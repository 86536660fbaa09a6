// Package sandbox is the sandbox controller: it owns the life of sandbox
// VMs below the CRI. It records a sandbox, attaches its network (CNI, or
// the hypervisor's NAT for a host-network pod), boots its VM from a
// pulled image (a disk clone of the image's base, a shim running the VM,
// warm starts from saved states, VM slots per guest OS), configures the
// guest (addresses, hostname, DNS, sysctls, the shared directory), binds
// volumes into it, and stops and removes it, undoing what a failure left
// half made. At daemon start it re-attaches to the shims that outlived
// the previous daemon and settles the rest.
//
// It takes a typed sandbox description (store.SandboxSpec, decoded once
// by its caller), never CRI protobuf, so a VM that is not a pod sandbox
// boots through it too. Package cri translates CRI calls into its
// methods; its callers hold Lock(id) around lifecycle calls on one
// sandbox, as the methods say.
package sandbox

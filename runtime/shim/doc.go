// Package shim is the per-VM shim of macvz (`macvz shim --dir DIR`) and
// the daemon's client of it.
//
// One shim runs per sandbox VM. It owns the vm.Machine (the QEMU child,
// or the vz VM in-process), holds the guest agent's channel (on QEMU one
// virtio-serial byte stream, so nobody else may), supervises container
// processes (their logs and exits), and serves runtime/shimapi plus the
// agent's own service (runtime/agentapi, forwarded) with ttrpc on
// <dir>/shim.sock. The daemon can restart or upgrade at any time: the shim
// and its VM keep running and the daemon re-attaches with Connect.
//
// # Files in the sandbox state directory
//
//	spec.json    the vm.Spec (written by Spawn, read by the shim)
//	shim.json    Config: backend name, log level (written by Spawn)
//	shim.sock    the shim's ttrpc socket (mode 0600; removed on Shutdown)
//	shim.pid     the shim's pid (removed on Shutdown)
//	shim.log     the shim's log (log/slog text, every line carries the
//	             sandbox id) and its stdout/stderr (panics land here)
//	exits/<container_id>[.<exec_id>].json  recorded exits of watched
//	             processes (ExitRecord)
//
// plus the backend's own files (qemu: qemu.pid, qemu.log, agent.sock,
// qmp.sock, console.log).
//
// # Process model: detach, reaping, re-attach
//
// Spawn starts `<binary> shim --dir DIR` in a new session (setsid: no
// controlling terminal, its own process group, so signals meant for the
// daemon's terminal or process group never reach it), with stdin from
// /dev/null and stdout/stderr appended to shim.log, and without a
// parent-death signal. The shim is the daemon's child while the daemon
// lives: Spawn keeps a goroutine in Wait, so a shim that exits is reaped
// at once. When the daemon dies the kernel re-parents the shim to the
// nearest child subreaper (systemd, a container's init) or to PID 1,
// which reaps it when it exits; a restarted daemon never reaps old shims
// and needs not to. (A daemon that wants to reap orphans itself can make
// itself a subreaper with PR_SET_CHILD_SUBREAPER, but then it must also
// wait for children it did not start.)
//
// The VM lives exactly as long as its shim: QEMU runs with a parent-death
// signal (SIGKILL) tied to the shim, and a vz VM is part of the shim
// process. A shim runs until Shutdown (or SIGTERM/SIGINT, which stop the
// VM gracefully first); a VM that stops on its own leaves the shim
// running so the daemon can still read the VM's and the processes' exits.
//
// Connect re-attaches to a live shim through its socket. Kill cleans up a
// shim that no longer answers (after checking that the pid in shim.pid
// really is a `macvz shim` for that directory).
package shim

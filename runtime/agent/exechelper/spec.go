// Package exechelper is the last step of starting a process in a Linux
// guest: a small program the agent runs in the forked child, which sets
// up the mount namespace, drops capabilities, switches user, sets
// no_new_privs, installs the seccomp filter and execs the process. Go
// cannot run code between fork and exec, so this is a program of its own
// (cmd/macvz-exec; the agent binary itself when an image lacks it).
//
// It is a package of its own, importing only the standard library's
// small parts, x/sys/unix and x/net/bpf, because every process start
// pays its start-up: under TCG a Go binary's runtime and package
// initialisation is most of a process start, and the agent's packages
// (gRPC's protobuf, net, unicode tables) took 2-3 times the helper's.
package exechelper

import (
	"encoding/base64"
	"encoding/binary"
	"fmt"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/net/bpf"
)

// Marker is argv[1] of the helper; the arguments Args makes follow it.
const Marker = "__macvz_exec"

// CapNames maps capability names to numbers (linux/capability.h).
var CapNames = map[string]int{
	"CAP_CHOWN": 0, "CAP_DAC_OVERRIDE": 1, "CAP_DAC_READ_SEARCH": 2, "CAP_FOWNER": 3, "CAP_FSETID": 4,
	"CAP_KILL": 5, "CAP_SETGID": 6, "CAP_SETUID": 7, "CAP_SETPCAP": 8, "CAP_LINUX_IMMUTABLE": 9,
	"CAP_NET_BIND_SERVICE": 10, "CAP_NET_BROADCAST": 11, "CAP_NET_ADMIN": 12, "CAP_NET_RAW": 13,
	"CAP_IPC_LOCK": 14, "CAP_IPC_OWNER": 15, "CAP_SYS_MODULE": 16, "CAP_SYS_RAWIO": 17, "CAP_SYS_CHROOT": 18,
	"CAP_SYS_PTRACE": 19, "CAP_SYS_PACCT": 20, "CAP_SYS_ADMIN": 21, "CAP_SYS_BOOT": 22, "CAP_SYS_NICE": 23,
	"CAP_SYS_RESOURCE": 24, "CAP_SYS_TIME": 25, "CAP_SYS_TTY_CONFIG": 26, "CAP_MKNOD": 27, "CAP_LEASE": 28,
	"CAP_AUDIT_WRITE": 29, "CAP_AUDIT_CONTROL": 30, "CAP_SETFCAP": 31, "CAP_MAC_OVERRIDE": 32,
	"CAP_MAC_ADMIN": 33, "CAP_SYSLOG": 34, "CAP_WAKE_ALARM": 35, "CAP_BLOCK_SUSPEND": 36, "CAP_AUDIT_READ": 37,
	"CAP_PERFMON": 38, "CAP_BPF": 39, "CAP_CHECKPOINT_RESTORE": 40,
}

// Spec is what the helper does before it execs the process.
type Spec struct {
	// RestrictCaps drops every capability not in Caps from the
	// bounding set.
	RestrictCaps bool
	Caps         []string
	NoNewPrivs   bool
	UID, GID     uint32
	Groups       []uint32
	// NewMountNS makes a mount namespace (with ReadOnlyRoot,
	// ReadonlyPaths and MaskedPaths applied); JoinMountNS (a pid) enters
	// another's.
	NewMountNS    bool
	ReadOnlyRoot  bool
	ReadonlyPaths []string
	MaskedPaths   []string
	JoinMountNS   int
	// NewPidNS: the helper is pid 1 of a new PID namespace (the agent
	// cloned it so) and mounts its /proc.
	NewPidNS bool
	// Seccomp is the compiled filter, installed last.
	Seccomp *Filter
}

// Filter is a seccomp filter ready for seccomp(SECCOMP_SET_MODE_FILTER).
type Filter struct {
	Insns []bpf.RawInstruction
	Flags uint
}

// MaxInsns is the kernel's limit on one filter (BPF_MAXINSNS).
const MaxInsns = 4096

// Bytes is the program as a struct sock_filter array (native endian:
// both guest architectures are little-endian).
func (f Filter) Bytes() []byte {
	b := make([]byte, 0, 8*len(f.Insns))
	for _, in := range f.Insns {
		b = binary.LittleEndian.AppendUint16(b, in.Op)
		b = append(b, in.Jt, in.Jf)
		b = binary.LittleEndian.AppendUint32(b, in.K)
	}
	return b
}

// ParseFilter is Bytes' inverse.
func ParseFilter(b []byte) ([]bpf.RawInstruction, error) {
	if len(b) == 0 || len(b)%8 != 0 || len(b)/8 > MaxInsns {
		return nil, fmt.Errorf("seccomp program of %d bytes is not 1 to %d instructions", len(b), MaxInsns)
	}
	out := make([]bpf.RawInstruction, len(b)/8)
	for i := range out {
		o := b[8*i:]
		out[i] = bpf.RawInstruction{Op: binary.LittleEndian.Uint16(o), Jt: o[2], Jf: o[3], K: binary.LittleEndian.Uint32(o[4:])}
	}
	return out, nil
}

// Args are the helper's arguments from argv[1] on that run path/argv as
// h says: Marker, key=value settings, "--", the path, the process's argv.
func Args(path string, argv []string, h Spec) ([]string, error) {
	for _, c := range h.Caps {
		if _, ok := CapNames[c]; !ok {
			return nil, fmt.Errorf("unknown capability %q", c)
		}
	}
	args := []string{Marker,
		"nnp=" + strconv.FormatBool(h.NoNewPrivs),
		"uid=" + strconv.FormatUint(uint64(h.UID), 10),
		"gid=" + strconv.FormatUint(uint64(h.GID), 10)}
	if h.RestrictCaps {
		args = append(args, "caps="+strings.Join(h.Caps, ","))
	}
	for _, g := range h.Groups {
		args = append(args, "group="+strconv.FormatUint(uint64(g), 10))
	}
	switch {
	case h.NewMountNS:
		args = append(args, "mntns=new", "roroot="+strconv.FormatBool(h.ReadOnlyRoot))
		if h.NewPidNS {
			args = append(args, "pidns=new")
		}
		for _, p := range h.ReadonlyPaths {
			if !filepath.IsAbs(p) {
				return nil, fmt.Errorf("read-only path %q is not absolute", p)
			}
			args = append(args, "ropath="+p)
		}
		for _, p := range h.MaskedPaths {
			if !filepath.IsAbs(p) {
				return nil, fmt.Errorf("masked path %q is not absolute", p)
			}
			args = append(args, "maskpath="+p)
		}
	case h.JoinMountNS > 0:
		args = append(args, "mntns=join:"+strconv.Itoa(h.JoinMountNS))
	}
	if h.Seccomp != nil {
		args = append(args, "seccomp="+base64.StdEncoding.EncodeToString(h.Seccomp.Bytes()),
			"seccompflags="+strconv.FormatUint(uint64(h.Seccomp.Flags), 10))
	}
	return append(append(args, "--", path), argv...), nil
}

// parsed is what the helper read from its arguments.
type parsed struct {
	spec   Spec
	syncFD int // -1: none
	path   string
	argv   []string
}

// parse reads the arguments after Marker.
func parse(args []string) (parsed, error) {
	p := parsed{syncFD: -1}
	h := &p.spec
	i := 0
	for ; i < len(args) && args[i] != "--"; i++ {
		k, v, _ := strings.Cut(args[i], "=")
		switch k {
		case "nnp":
			h.NoNewPrivs = v == "true"
		case "uid", "gid", "group":
			n, err := strconv.ParseUint(v, 10, 32)
			if err != nil {
				return p, fmt.Errorf("bad %s %q", k, v)
			}
			switch k {
			case "uid":
				h.UID = uint32(n)
			case "gid":
				h.GID = uint32(n)
			default:
				h.Groups = append(h.Groups, uint32(n))
			}
		case "caps":
			h.RestrictCaps = true
			h.Caps = nil
			if v != "" {
				h.Caps = strings.Split(v, ",")
			}
			for _, c := range h.Caps {
				if _, ok := CapNames[c]; !ok {
					return p, fmt.Errorf("unknown capability %q", c)
				}
			}
		case "sync":
			n, err := strconv.Atoi(v)
			if err != nil || n < 3 {
				return p, fmt.Errorf("bad sync fd %q", v)
			}
			p.syncFD = n
		case "mntns":
			if v == "new" {
				h.NewMountNS = true
				break
			}
			n, err := strconv.Atoi(strings.TrimPrefix(v, "join:"))
			if !strings.HasPrefix(v, "join:") || err != nil || n <= 0 {
				return p, fmt.Errorf("bad mntns %q", v)
			}
			h.JoinMountNS = n
		case "roroot":
			h.ReadOnlyRoot = v == "true"
		case "ropath":
			h.ReadonlyPaths = append(h.ReadonlyPaths, v)
		case "maskpath":
			h.MaskedPaths = append(h.MaskedPaths, v)
		case "pidns":
			h.NewPidNS = v == "new"
		case "seccomp":
			b, err := base64.StdEncoding.DecodeString(v)
			if err != nil {
				return p, fmt.Errorf("bad seccomp program: %v", err)
			}
			insns, err := ParseFilter(b)
			if err != nil {
				return p, err
			}
			if h.Seccomp == nil {
				h.Seccomp = &Filter{}
			}
			h.Seccomp.Insns = insns
		case "seccompflags":
			n, err := strconv.ParseUint(v, 10, 32)
			if err != nil {
				return p, fmt.Errorf("bad seccomp flags %q", v)
			}
			if h.Seccomp == nil {
				h.Seccomp = &Filter{}
			}
			h.Seccomp.Flags = uint(n)
		default:
			return p, fmt.Errorf("unknown setting %q", args[i])
		}
	}
	if i+1 >= len(args) {
		return p, fmt.Errorf("no command")
	}
	if h.Seccomp != nil && len(h.Seccomp.Insns) == 0 {
		return p, fmt.Errorf("seccomp flags without a program")
	}
	p.path, p.argv = args[i+1], args[i+2:]
	return p, nil
}

package agent

import (
	"fmt"
	"slices"

	"github.com/elastic/go-seccomp-bpf/arch"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/net/bpf"

	"github.com/macvz/macvz/runtime/agent/exechelper"
)

// A seccomp profile (OCI runtime-spec LinuxSeccomp, the format of
// Localhost profiles and of the runtimes' default one) compiled to a
// classic BPF program for one architecture, as runc does with libseccomp.
// The agent is a static Go binary without cgo, so the compiler is ours;
// the syscall tables are go-seccomp-bpf's.

// seccomp_data offsets (linux/seccomp.h): nr, arch, then six 64-bit args.
const (
	seccompNrOff   = 0
	seccompArchOff = 4
	seccompArgOff  = 16
	// bpfMaxInsns is the kernel's limit on one filter (BPF_MAXINSNS).
	bpfMaxInsns = exechelper.MaxInsns
	// x32SyscallBit marks the x32 ABI's syscall numbers on x86_64.
	x32SyscallBit = 0x40000000
)

// Filter return values (linux/seccomp.h).
const (
	retKillProcess = 0x80000000
	retKillThread  = 0x00000000
	retTrap        = 0x00030000
	retErrno       = 0x00050000
	retTrace       = 0x7ff00000
	retLog         = 0x7ffc0000
	retAllow       = 0x7fff0000
	errnoEPERM     = 1
	errnoENOSYS    = 38
)

// Filter flags a profile may name (seccomp(2)).
var seccompFlags = map[specs.LinuxSeccompFlag]uint{
	specs.LinuxSeccompFlagLog:       2, // SECCOMP_FILTER_FLAG_LOG
	specs.LinuxSeccompFlagSpecAllow: 4, // SECCOMP_FILTER_FLAG_SPEC_ALLOW
}

// compiledSeccomp is a filter ready for seccomp(SECCOMP_SET_MODE_FILTER).
type compiledSeccomp = exechelper.Filter

// seccompAction is the filter's return value for a profile action.
func seccompAction(a specs.LinuxSeccompAction, errnoRet *uint) (uint32, error) {
	errno := uint32(errnoEPERM)
	if errnoRet != nil {
		if *errnoRet > 0xffff {
			return 0, fmt.Errorf("errnoRet %d does not fit the filter's 16-bit data", *errnoRet)
		}
		errno = uint32(*errnoRet)
	}
	switch a {
	case specs.ActAllow:
		return retAllow, nil
	case specs.ActErrno:
		return retErrno | errno, nil
	case specs.ActKill, specs.ActKillThread:
		return retKillThread, nil
	case specs.ActKillProcess:
		return retKillProcess, nil
	case specs.ActTrap:
		return retTrap, nil
	case specs.ActTrace:
		return retTrace | errno, nil
	case specs.ActLog:
		return retLog, nil
	case specs.ActNotify:
		return 0, fmt.Errorf("action %s needs a seccomp agent listening on the host; macvz does not run one", a)
	}
	return 0, fmt.Errorf("unknown seccomp action %q", a)
}

// seccompArchOf is the OCI name of a go-seccomp-bpf architecture.
func seccompArchOf(a *arch.Info) specs.Arch {
	switch a.ID {
	case arch.X86_64.ID:
		return specs.ArchX86_64
	case arch.AARCH64.ID:
		return specs.ArchAARCH64
	}
	return ""
}

// asm is a program under construction: forward jumps to labels are
// resolved when the label is placed.
type asm struct {
	insns []bpf.Instruction
	// fix: instruction index → labels of its true and false branches
	// (-1 = fall through).
	fix    map[int][2]int
	labels []int // position of each label, -1 until placed
}

func (a *asm) label() int { a.labels = append(a.labels, -1); return len(a.labels) - 1 }

func (a *asm) place(l int) { a.labels[l] = len(a.insns) }

func (a *asm) emit(in bpf.Instruction) { a.insns = append(a.insns, in) }

// jump emits a conditional jump to labels t and f (-1 = the next one).
func (a *asm) jump(cond bpf.JumpTest, val uint32, t, f int) {
	if a.fix == nil {
		a.fix = map[int][2]int{}
	}
	a.fix[len(a.insns)] = [2]int{t, f}
	a.emit(bpf.JumpIf{Cond: cond, Val: val})
}

func (a *asm) resolve() error {
	for i, tf := range a.fix {
		j := a.insns[i].(bpf.JumpIf)
		for k, l := range tf {
			if l < 0 {
				continue
			}
			skip := a.labels[l] - i - 1
			if a.labels[l] < 0 || skip < 0 || skip > 255 {
				return fmt.Errorf("seccomp rule too long for a conditional jump")
			}
			if k == 0 {
				j.SkipTrue = uint8(skip)
			} else {
				j.SkipFalse = uint8(skip)
			}
		}
		a.insns[i] = j
	}
	return nil
}

// argCond emits the test of one 64-bit argument: it falls through when the
// condition holds and jumps to fail when it does not.
func argCond(a *asm, c specs.LinuxSeccompArg, fail int) error {
	if c.Index > 5 {
		return fmt.Errorf("argument index %d: a syscall has six arguments (0-5)", c.Index)
	}
	lo := uint32(seccompArgOff + 8*c.Index)
	hi := lo + 4 // little-endian
	vh, vl := uint32(c.Value>>32), uint32(c.Value)
	ld := func(off uint32) { a.emit(bpf.LoadAbsolute{Off: off, Size: 4}) }
	pass := a.label()
	switch c.Op {
	case specs.OpEqualTo:
		ld(hi)
		a.jump(bpf.JumpNotEqual, vh, fail, -1)
		ld(lo)
		a.jump(bpf.JumpNotEqual, vl, fail, -1)
	case specs.OpNotEqual:
		ld(hi)
		a.jump(bpf.JumpNotEqual, vh, pass, -1)
		ld(lo)
		a.jump(bpf.JumpEqual, vl, fail, -1)
	case specs.OpMaskedEqual:
		// Value is the mask, ValueTwo what the masked argument must be.
		mh, ml := uint32(c.Value>>32), uint32(c.Value)
		th, tl := uint32(c.ValueTwo>>32), uint32(c.ValueTwo)
		ld(hi)
		a.emit(bpf.ALUOpConstant{Op: bpf.ALUOpAnd, Val: mh})
		a.jump(bpf.JumpNotEqual, th, fail, -1)
		ld(lo)
		a.emit(bpf.ALUOpConstant{Op: bpf.ALUOpAnd, Val: ml})
		a.jump(bpf.JumpNotEqual, tl, fail, -1)
	case specs.OpGreaterThan, specs.OpGreaterEqual:
		// Unsigned 64-bit: the high words decide unless equal.
		ld(hi)
		a.jump(bpf.JumpGreaterThan, vh, pass, -1)
		a.jump(bpf.JumpNotEqual, vh, fail, -1)
		ld(lo)
		if c.Op == specs.OpGreaterThan {
			a.jump(bpf.JumpGreaterThan, vl, pass, fail)
		} else {
			a.jump(bpf.JumpGreaterOrEqual, vl, pass, fail)
		}
	case specs.OpLessThan, specs.OpLessEqual:
		ld(hi)
		a.jump(bpf.JumpGreaterThan, vh, fail, -1)
		a.jump(bpf.JumpNotEqual, vh, pass, -1)
		ld(lo)
		if c.Op == specs.OpLessThan {
			a.jump(bpf.JumpGreaterOrEqual, vl, fail, pass)
		} else {
			a.jump(bpf.JumpGreaterThan, vl, fail, pass)
		}
	default:
		return fmt.Errorf("unknown seccomp operator %q", c.Op)
	}
	a.place(pass)
	return nil
}

// compileSeccomp compiles p for the architecture ai. Rules are tried in
// the profile's order and the first match decides; a syscall name this
// architecture does not have is skipped (profiles list names of every
// architecture, as libseccomp allows). Conditions on different arguments
// of one rule must all hold; several on the same argument are
// alternatives (runc's reading of the OCI spec). A syscall from another
// ABI than ai's (i386 through int 0x80 on x86_64, x32) is killed or
// refused with ENOSYS: its numbers mean other syscalls.
func compileSeccomp(p *specs.LinuxSeccomp, ai *arch.Info) (compiledSeccomp, error) {
	var out compiledSeccomp
	if p.ListenerPath != "" {
		return out, fmt.Errorf("seccomp listenerPath %q: macvz runs no seccomp agent", p.ListenerPath)
	}
	native := seccompArchOf(ai)
	if native == "" {
		return out, fmt.Errorf("no seccomp support for architecture %s", ai.Name)
	}
	if len(p.Architectures) > 0 && !slices.Contains(p.Architectures, native) {
		return out, fmt.Errorf("the seccomp profile's architectures %v do not include this guest's %s", p.Architectures, native)
	}
	for _, f := range p.Flags {
		v, ok := seccompFlags[f]
		if !ok {
			return out, fmt.Errorf("seccomp flag %q is not supported", f)
		}
		out.Flags |= v
	}
	def, err := seccompAction(p.DefaultAction, p.DefaultErrnoRet)
	if err != nil {
		return out, fmt.Errorf("defaultAction: %w", err)
	}
	a := &asm{}
	a.emit(bpf.LoadAbsolute{Off: seccompArchOff, Size: 4})
	a.emit(bpf.JumpIf{Cond: bpf.JumpEqual, Val: uint32(ai.ID), SkipTrue: 1})
	a.emit(bpf.RetConstant{Val: retKillProcess})
	a.emit(bpf.LoadAbsolute{Off: seccompNrOff, Size: 4})
	if ai.ID == arch.X86_64.ID {
		a.emit(bpf.JumpIf{Cond: bpf.JumpGreaterOrEqual, Val: x32SyscallBit, SkipFalse: 1})
		a.emit(bpf.RetConstant{Val: retErrno | errnoENOSYS})
	}
	for i, sc := range p.Syscalls {
		act, err := seccompAction(sc.Action, sc.ErrnoRet)
		if err != nil {
			return out, fmt.Errorf("syscalls[%d] %v: %w", i, sc.Names, err)
		}
		// Groups of conditions, any of which matches.
		groups := [][]specs.LinuxSeccompArg{sc.Args}
		seen := map[uint]bool{}
		for _, c := range sc.Args {
			if seen[c.Index] {
				groups = nil
				for _, c := range sc.Args {
					groups = append(groups, []specs.LinuxSeccompArg{c})
				}
				break
			}
			seen[c.Index] = true
		}
		for _, name := range sc.Names {
			nr, ok := ai.SyscallNames[name]
			if !ok {
				continue
			}
			for _, g := range groups {
				next := a.label()
				a.jump(bpf.JumpNotEqual, uint32(nr), next, -1)
				if len(g) == 0 {
					a.emit(bpf.RetConstant{Val: act})
					a.place(next)
					continue
				}
				fail := a.label()
				for _, c := range g {
					if err := argCond(a, c, fail); err != nil {
						return out, fmt.Errorf("syscalls[%d] %s: %w", i, name, err)
					}
				}
				a.emit(bpf.RetConstant{Val: act})
				a.place(fail)
				// The argument tests replaced the syscall number.
				a.emit(bpf.LoadAbsolute{Off: seccompNrOff, Size: 4})
				a.place(next)
			}
		}
	}
	a.emit(bpf.RetConstant{Val: def})
	if err := a.resolve(); err != nil {
		return out, err
	}
	if len(a.insns) > bpfMaxInsns {
		return out, fmt.Errorf("the seccomp profile compiles to %d instructions, more than the kernel's %d", len(a.insns), bpfMaxInsns)
	}
	out.Insns, err = bpf.Assemble(a.insns)
	return out, err
}

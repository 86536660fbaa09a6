package agent

import (
	"encoding/binary"
	"encoding/json"
	"strings"
	"testing"

	"github.com/elastic/go-seccomp-bpf/arch"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/net/bpf"

	"github.com/macvz/macvz/runtime/agent/exechelper"
)

// runFilter runs a compiled filter on one syscall in x/net/bpf's VM. The
// VM loads words big-endian where the kernel loads them native: the
// seccomp_data is laid out in 32-bit words accordingly (the low word of
// each argument first, as on a little-endian machine).
func runFilter(t *testing.T, c compiledSeccomp, ai *arch.Info, auditArch uint32, name string, args ...uint64) uint32 {
	t.Helper()
	nr, ok := ai.SyscallNames[name]
	if !ok {
		t.Fatalf("no syscall %s on %s", name, ai.Name)
	}
	return runFilterNr(t, c, auditArch, uint32(nr), args...)
}

func runFilterNr(t *testing.T, c compiledSeccomp, auditArch, nr uint32, args ...uint64) uint32 {
	t.Helper()
	data := make([]byte, 64)
	binary.BigEndian.PutUint32(data[0:], nr)
	binary.BigEndian.PutUint32(data[4:], auditArch)
	for i, a := range args {
		binary.BigEndian.PutUint32(data[16+8*i:], uint32(a))
		binary.BigEndian.PutUint32(data[16+8*i+4:], uint32(a>>32))
	}
	insns, err := exechelper.ParseFilter(c.Bytes())
	if err != nil {
		t.Fatal(err)
	}
	prog, allDecoded := bpf.Disassemble(insns)
	if !allDecoded {
		t.Fatal("the program does not disassemble")
	}
	vm, err := bpf.NewVM(prog)
	if err != nil {
		t.Fatalf("the BPF VM refuses the program: %v", err)
	}
	r, err := vm.Run(data)
	if err != nil {
		t.Fatal(err)
	}
	return uint32(r)
}

func compileJSON(t *testing.T, profile string, ai *arch.Info) compiledSeccomp {
	t.Helper()
	var p specs.LinuxSeccomp
	if err := json.Unmarshal([]byte(profile), &p); err != nil {
		t.Fatal(err)
	}
	c, err := compileSeccomp(&p, ai)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// critest's Localhost profile: allow all but chmod and fchmodat.
const blockChmod = `{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["chmod", "fchmodat", "no_such_syscall"], "action": "SCMP_ACT_ERRNO"}]}`

func TestSeccompDenyList(t *testing.T) {
	for _, ai := range []*arch.Info{arch.X86_64, arch.AARCH64} {
		t.Run(ai.Name, func(t *testing.T) {
			c := compileJSON(t, blockChmod, ai)
			id := uint32(ai.ID)
			if got := runFilter(t, c, ai, id, "fchmodat"); got != retErrno|errnoEPERM {
				t.Errorf("fchmodat: %#x, want EPERM", got)
			}
			if got := runFilter(t, c, ai, id, "read"); got != retAllow {
				t.Errorf("read: %#x, want allow", got)
			}
			if ai == arch.X86_64 {
				if got := runFilter(t, c, ai, id, "chmod"); got != retErrno|errnoEPERM {
					t.Errorf("chmod: %#x, want EPERM", got)
				}
				if got := runFilterNr(t, c, id, x32SyscallBit|90); got != retErrno|errnoENOSYS {
					t.Errorf("an x32 syscall: %#x, want ENOSYS", got)
				}
			}
			// Another ABI's numbers mean other syscalls: killed.
			if got := runFilter(t, c, ai, 0x40000003, "read"); got != retKillProcess {
				t.Errorf("a foreign architecture: %#x, want kill", got)
			}
		})
	}
}

func TestSeccompArgs(t *testing.T) {
	ai := arch.X86_64
	id := uint32(ai.ID)
	c := compileJSON(t, `{"defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": 38, "syscalls": [
		{"names": ["personality"], "action": "SCMP_ACT_ALLOW", "args": [{"index": 0, "value": 8, "op": "SCMP_CMP_EQ"}]},
		{"names": ["personality"], "action": "SCMP_ACT_ALLOW", "args": [{"index": 0, "value": 4294967295, "op": "SCMP_CMP_EQ"}]},
		{"names": ["clone"], "action": "SCMP_ACT_ALLOW", "args": [{"index": 0, "value": 2114060288, "valueTwo": 0, "op": "SCMP_CMP_MASKED_EQ"}]},
		{"names": ["write"], "action": "SCMP_ACT_ALLOW", "args": [{"index": 0, "value": 4294967296, "op": "SCMP_CMP_GE"}, {"index": 1, "value": 5, "op": "SCMP_CMP_LT"}]},
		{"names": ["read"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13, "args": [{"index": 2, "value": 1, "op": "SCMP_CMP_EQ"}, {"index": 2, "value": 3, "op": "SCMP_CMP_EQ"}]},
		{"names": ["read"], "action": "SCMP_ACT_ALLOW"},
		{"names": ["close"], "action": "SCMP_ACT_ALLOW", "args": [{"index": 0, "value": 7, "op": "SCMP_CMP_NE"}]}
	]}`, ai)
	allow, enosys, eacces := uint32(retAllow), uint32(retErrno|errnoENOSYS), uint32(retErrno|13)
	cases := []struct {
		name string
		args []uint64
		want uint32
	}{
		{"personality", []uint64{8}, allow},
		{"personality", []uint64{0xffffffff}, allow},
		{"personality", []uint64{1<<32 | 8}, enosys}, // the high word counts
		{"personality", []uint64{0}, enosys},
		{"clone", []uint64{0x11}, allow},               // no namespace flag
		{"clone", []uint64{0x20000000 | 0x11}, enosys}, // CLONE_NEWUTS
		{"write", []uint64{1 << 32, 4}, allow},
		{"write", []uint64{1<<32 - 1, 4}, enosys},
		{"write", []uint64{1 << 33, 5}, enosys},
		{"read", []uint64{0, 0, 1}, eacces}, // same index: either condition
		{"read", []uint64{0, 0, 3}, eacces},
		{"read", []uint64{0, 0, 2}, allow},
		{"close", []uint64{7}, enosys},
		{"close", []uint64{1<<32 | 7}, allow},
		{"close", []uint64{8}, allow},
		{"open", nil, enosys},
	}
	for _, tc := range cases {
		if got := runFilter(t, c, ai, id, tc.name, tc.args...); got != tc.want {
			t.Errorf("%s%v: %#x, want %#x", tc.name, tc.args, got, tc.want)
		}
	}
}

func TestSeccompRefuses(t *testing.T) {
	for _, tc := range []struct{ profile, want string }{
		{`{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["read"], "action": "SCMP_ACT_NOTIFY"}]}`, "seccomp agent"},
		{`{"defaultAction": "SCMP_ACT_BOGUS"}`, "unknown seccomp action"},
		{`{"defaultAction": "SCMP_ACT_ALLOW", "architectures": ["SCMP_ARCH_PPC64"]}`, "do not include"},
		{`{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ERRNO", "args": [{"index": 6, "value": 1, "op": "SCMP_CMP_EQ"}]}]}`, "six arguments"},
		{`{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ERRNO", "args": [{"index": 0, "value": 1, "op": "SCMP_CMP_XX"}]}]}`, "unknown seccomp operator"},
		{`{"defaultAction": "SCMP_ACT_ALLOW", "flags": ["SECCOMP_FILTER_FLAG_TSYNC"]}`, "not supported"},
	} {
		var p specs.LinuxSeccomp
		if err := json.Unmarshal([]byte(tc.profile), &p); err != nil {
			t.Fatal(err)
		}
		if _, err := compileSeccomp(&p, arch.X86_64); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: error %v, want one saying %q", tc.profile, err, tc.want)
		}
	}
}

func TestSeccompBytesRoundTrip(t *testing.T) {
	c := compileJSON(t, blockChmod, arch.AARCH64)
	back, err := exechelper.ParseFilter(c.Bytes())
	if err != nil || len(back) != len(c.Insns) {
		t.Fatalf("round trip: %d instructions, %v", len(back), err)
	}
	for i := range back {
		if back[i] != c.Insns[i] {
			t.Fatalf("instruction %d: %+v, want %+v", i, back[i], c.Insns[i])
		}
	}
	for _, bad := range [][]byte{nil, make([]byte, 7), make([]byte, 8*(bpfMaxInsns+1))} {
		if _, err := exechelper.ParseFilter(bad); err == nil {
			t.Errorf("%d bytes accepted", len(bad))
		}
	}
}

package exechelper

import (
	"reflect"
	"strings"
	"testing"

	"golang.org/x/net/bpf"
)

func TestMountPlanOrder(t *testing.T) {
	plan := mountPlan(Spec{NewPidNS: true, ReadOnlyRoot: true, ReadonlyPaths: []string{"/proc/sys", "/tmp"}, MaskedPaths: []string{"/proc/kcore", "/bin/ls"}})
	var got []string
	for _, s := range plan {
		got = append(got, []string{"proc", "ro", "mask", "roroot"}[s.kind]+":"+s.path)
	}
	want := "proc:/proc ro:/proc/sys ro:/tmp mask:/proc/kcore mask:/bin/ls roroot:/"
	if strings.Join(got, " ") != want {
		t.Errorf("plan %v, want %s", got, want)
	}
	if p := mountPlan(Spec{}); len(p) != 0 {
		t.Errorf("empty spec planned %v", p)
	}
}

// What the agent writes, the helper reads back; what it cannot read, it
// refuses rather than run the process with less isolation.
func TestArgsParseRoundTrip(t *testing.T) {
	h := Spec{RestrictCaps: true, Caps: []string{"CAP_CHOWN", "CAP_KILL"}, NoNewPrivs: true, UID: 1000, GID: 100,
		Groups: []uint32{4, 27}, NewMountNS: true, ReadOnlyRoot: true, ReadonlyPaths: []string{"/proc/sys"},
		MaskedPaths: []string{"/proc/kcore"}, NewPidNS: true,
		Seccomp: &Filter{Insns: []bpf.RawInstruction{{Op: 6, K: 0x7fff0000}}, Flags: 2}}
	args, err := Args("/bin/sh", []string{"sh", "-c", "true"}, h)
	if err != nil {
		t.Fatal(err)
	}
	if args[0] != Marker {
		t.Fatalf("args start %q", args[0])
	}
	p, err := parse(append(args[1:2:2], append([]string{"sync=3"}, args[2:]...)...))
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(p.spec, h) || p.syncFD != 3 || p.path != "/bin/sh" || strings.Join(p.argv, " ") != "sh -c true" {
		t.Errorf("parsed %+v", p)
	}
	if _, err := Args("/bin/sh", nil, Spec{Caps: []string{"CAP_NOPE"}}); err == nil {
		t.Error("an unknown capability was accepted")
	}
	for _, bad := range [][]string{
		{"uid=x", "--", "/bin/true"}, {"caps=CAP_NOPE", "--", "/bin/true"}, {"sync=1", "--", "/bin/true"},
		{"mntns=elsewhere", "--", "/bin/true"}, {"mntns=join:0", "--", "/bin/true"}, {"seccomp=!!", "--", "/bin/true"}, {"seccompflags=2", "--", "/bin/true"},
		{"what=1", "--", "/bin/true"}, {"nnp=true"}, {"nnp=true", "--"},
	} {
		if _, err := parse(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

func TestArgsJoinMountNS(t *testing.T) {
	args, err := Args("/bin/true", []string{"true"}, Spec{JoinMountNS: 42})
	if err != nil {
		t.Fatal(err)
	}
	p, err := parse(args[1:])
	if err != nil || p.spec.JoinMountNS != 42 || p.spec.NewMountNS {
		t.Errorf("parsed %+v, %v", p, err)
	}
}

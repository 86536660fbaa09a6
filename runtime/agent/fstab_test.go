package agent

import (
	"reflect"
	"strings"
	"testing"
)

func TestParseFstab(t *testing.T) {
	got, err := parseFstab(strings.NewReader(`# the node image
tmpfs  /var/lib/kubelet  tmpfs  mode=0755,nosuid  0 0
/dev/vda1 / ext4 defaults 0 1
none swap swap sw 0 0
tmpfs /later tmpfs noauto 0 0

tmpfs /scratch/../data tmpfs
`))
	if err != nil {
		t.Fatal(err)
	}
	want := []fstabEntry{
		{source: "tmpfs", target: "/var/lib/kubelet", fstype: "tmpfs", options: []string{"mode=0755", "nosuid"}},
		{source: "tmpfs", target: "/data", fstype: "tmpfs"},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("got %+v, want %+v", got, want)
	}
	for _, bad := range []string{"tmpfs relative tmpfs", "tmpfs /x", "only-one"} {
		if _, err := parseFstab(strings.NewReader(bad)); err == nil {
			t.Errorf("%q parsed", bad)
		}
	}
}

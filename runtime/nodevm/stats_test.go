package nodevm

import (
	"os/exec"
	"slices"
	"strings"
	"testing"
)

// kubelet takes stats from the CRI: the feature gate comes before the
// user's arguments, so a --feature-gates of theirs is merged over it
// (kubelet keeps the last value of each gate).
func TestStatsFeatureGate(t *testing.T) {
	s := New(Config{Image: "node", KubeletArgs: []string{"--feature-gates=PodAndContainerStatsFromCRI=false,Foo=true"}}, nil, nil)
	args := s.containerConfig().GetArgs()
	gate := slices.Index(args, StatsFeatureGate)
	user := slices.Index(args, "--feature-gates=PodAndContainerStatsFromCRI=false,Foo=true")
	if gate < 0 || user < 0 || gate > user {
		t.Errorf("kubelet's args %q: want %s before the user's --feature-gates", args, StatsFeatureGate)
	}
}

// The image filesystem: its directory shared read-only, and a read-only
// overlay over it mounted at the image filesystem's path before kubelet
// starts; none without ImageFs.
func TestImageFsOverlay(t *testing.T) {
	s := New(Config{Image: "node", Shares: []string{"/var/log/pods"}, ImageFs: "/var/lib/mac vz", ImageFsDir: "/var/lib/mac vz/node-imagefs"}, nil, nil)
	cc := s.containerConfig()
	ms := cc.GetMounts()
	if len(ms) != 2 || ms[1].GetHostPath() != "/var/lib/mac vz/node-imagefs" || ms[1].GetContainerPath() != imageFsShare || !ms[1].GetReadonly() {
		t.Errorf("mounts %v, want the share then the image filesystem's directory, read-only at %s", ms, imageFsShare)
	}
	script := cc.GetCommand()[2]
	want := "mount --make-rshared /var/lib/kubelet && { mkdir -p /run/macvz-imagefs/empty '/var/lib/mac vz' && mount -t overlay -o ro,lowerdir=/run/macvz-imagefs/host:/run/macvz-imagefs/empty overlay '/var/lib/mac vz' || echo"
	if !strings.Contains(script, want) || !strings.HasSuffix(script, `exec /usr/bin/kubelet "$@"`) {
		t.Errorf("kubelet's command %q, want %q in it", script, want)
	}

	s = New(Config{Image: "node", Shares: []string{"/var/log/pods"}}, nil, nil)
	cc = s.containerConfig()
	if len(cc.GetMounts()) != 1 || strings.Contains(cc.GetCommand()[2], "overlay") {
		t.Errorf("no image filesystem: mounts %v, command %q", cc.GetMounts(), cc.GetCommand()[2])
	}
}

func TestShellQuote(t *testing.T) {
	for _, s := range []string{"/a b", "it's", `a"b$c\d`, ""} {
		out, err := exec.Command("/bin/sh", "-c", "printf %s "+shellQuote(s)).Output()
		if err != nil || string(out) != s {
			t.Errorf("sh saw %q for %q (%v)", out, s, err)
		}
	}
}

package guest

import (
	"runtime/debug"
	"testing"
)

func TestKubeletVersionFromBuildInfo(t *testing.T) {
	for _, tc := range []struct {
		name string
		bi   debug.BuildInfo
		want string
	}{
		{"ldflags", debug.BuildInfo{
			Main:     debug.Module{Path: "k8s.io/kubernetes", Version: "(devel)"},
			Settings: []debug.BuildSetting{{Key: "-ldflags", Value: ` -X k8s.io/component-base/version.gitVersion=v1.37.2 -X k8s.io/component-base/version.gitMajor=1`}},
		}, "v1.37.2"},
		{"ldflags quoted", debug.BuildInfo{
			Settings: []debug.BuildSetting{{Key: "-ldflags", Value: `-s -w -X 'k8s.io/component-base/version.gitVersion=v1.36.1' -X 'k8s.io/client-go/pkg/version.gitVersion=v1.36.1'`}},
		}, "v1.36.1"},
		{"main module", debug.BuildInfo{Main: debug.Module{Path: "k8s.io/kubernetes", Version: "v1.37.2"}}, "v1.37.2"},
		{"dependency", debug.BuildInfo{
			Main: debug.Module{Path: "example.com/tools", Version: "(devel)"},
			Deps: []*debug.Module{{Path: "k8s.io/api", Version: "v0.37.2"}, {Path: "k8s.io/kubernetes", Version: "v1.35.0"}},
		}, "v1.35.0"},
		{"devel tree", debug.BuildInfo{Main: debug.Module{Path: "k8s.io/kubernetes", Version: "(devel)"}}, ""},
		{"not kubernetes", debug.BuildInfo{Main: debug.Module{Path: "example.com/x", Version: "v1.0.0"}}, ""},
	} {
		if got := kubeletVersionFromBuildInfo(&tc.bi); got != tc.want {
			t.Errorf("%s: %q, want %q", tc.name, got, tc.want)
		}
	}
}

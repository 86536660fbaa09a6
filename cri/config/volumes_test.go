package config

import (
	"reflect"
	"strings"
	"testing"
)

// TestVolumeRoots: vz.volume_roots defaults to kubelet's pods directory
// and takes only absolute, clean paths.
func TestVolumeRoots(t *testing.T) {
	if got := Default().VZ.VolumeRoots; !reflect.DeepEqual(got, []string{"/var/lib/kubelet/pods"}) {
		t.Errorf("default volume roots %v", got)
	}
	c, err := Decode(strings.NewReader("[vz]\nvolume_roots = [\"/a\", \"/b/pods\"]\n[runtime_handlers.macvz]\nallow_volume_dirs_annotation = true\n"))
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(c.VZ.VolumeRoots, []string{"/a", "/b/pods"}) || !c.RuntimeHandlers[DefaultHandler].AllowVolumeDirsAnnotation {
		t.Errorf("decoded %+v %+v", c.VZ, c.RuntimeHandlers)
	}
	for _, r := range []string{"rel", "/a/../b", "/a/", ""} {
		_, err := Decode(strings.NewReader("[vz]\nvolume_roots = [\"" + r + "\"]\n"))
		if err == nil || !strings.Contains(err.Error(), "vz.volume_roots") {
			t.Errorf("%q: %v", r, err)
		}
	}
}

package cri

import (
	"testing"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

func TestCgroupDriver(t *testing.T) {
	yes := func() bool { return true }
	no := func() bool { return false }
	for _, tc := range []struct {
		setting string
		booted  func() bool
		want    runtimeapi.CgroupDriver
	}{
		{"auto", yes, runtimeapi.CgroupDriver_SYSTEMD},
		{"auto", no, runtimeapi.CgroupDriver_CGROUPFS},
		{"systemd", no, runtimeapi.CgroupDriver_SYSTEMD},
		{"cgroupfs", yes, runtimeapi.CgroupDriver_CGROUPFS},
	} {
		if got := cgroupDriver(tc.setting, tc.booted); got != tc.want {
			t.Errorf("cgroupDriver(%q, booted=%v) = %v, want %v", tc.setting, tc.booted(), got, tc.want)
		}
	}
}

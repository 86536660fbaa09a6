package agent

import (
	"testing"

	"golang.org/x/sys/unix"
)

func TestMountFlags(t *testing.T) {
	flags, data := mountFlags([]string{"defaults", "ro", "nosuid", "mode=0755", "size=64m", "x-systemd.automount", "nofail"})
	if flags != unix.MS_RDONLY|unix.MS_NOSUID || data != "mode=0755,size=64m" {
		t.Errorf("flags %#x, data %q", flags, data)
	}
}

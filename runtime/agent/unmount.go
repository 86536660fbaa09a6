package agent

import (
	"strings"
)

// mountinfoOthers reads /proc/self/mountinfo (proc(5): mount ID, parent
// ID, major:minor, root, mount point, ...) and returns the device of the
// mount at target and the other mount points of that device: the binds
// that keep a share's file system alive after its root is unmounted.
// found is false when nothing is mounted at target. Mount points are
// octal-escaped by the kernel; target is compared escaped the same way.
func mountinfoOthers(mountinfo, target string) (dev string, others []string, found bool) {
	esc := strings.NewReplacer(" ", `\040`, "\t", `\011`, "\n", `\012`, `\`, `\134`).Replace(target)
	type ent struct{ dev, point string }
	var ents []ent
	for _, line := range strings.Split(mountinfo, "\n") {
		f := strings.Fields(line)
		if len(f) < 5 {
			continue
		}
		ents = append(ents, ent{f[2], f[4]})
		if f[4] == esc {
			// The last mount at a point is the visible one.
			dev, found = f[2], true
		}
	}
	if !found {
		return "", nil, false
	}
	for _, e := range ents {
		if e.dev == dev && e.point != esc {
			others = append(others, e.point)
		}
	}
	return dev, others, true
}

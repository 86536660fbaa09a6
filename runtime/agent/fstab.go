package agent

import (
	"bufio"
	"fmt"
	"io"
	"path/filepath"
	"strings"
)

// fstabEntry is one line of /etc/fstab the agent mounts as init.
type fstabEntry struct {
	source, target, fstype string
	// options are the mount options as written; mountFlags splits them
	// into flags and data.
	options []string
}

// parseFstab reads fstab(5): "source target type options [freq [passno]]",
// '#' comments. Entries with noauto, swap, and the root (already
// mounted) are left out; a target must be an absolute path other than /.
func parseFstab(r io.Reader) ([]fstabEntry, error) {
	var out []fstabEntry
	sc := bufio.NewScanner(r)
	n := 0
	for sc.Scan() {
		n++
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		f := strings.Fields(line)
		if len(f) < 3 {
			return nil, fmt.Errorf("fstab line %d: want source, target and type: %q", n, line)
		}
		e := fstabEntry{source: f[0], target: f[1], fstype: f[2]}
		if len(f) > 3 {
			e.options = strings.Split(f[3], ",")
		}
		if e.fstype == "swap" || e.target == "none" || contains(e.options, "noauto") {
			continue
		}
		if !filepath.IsAbs(e.target) || filepath.Clean(e.target) == "/" {
			if filepath.Clean(e.target) == "/" {
				continue
			}
			return nil, fmt.Errorf("fstab line %d: target %q is not an absolute path", n, e.target)
		}
		e.target = filepath.Clean(e.target)
		out = append(out, e)
	}
	return out, sc.Err()
}

func contains(ss []string, s string) bool {
	for _, x := range ss {
		if x == s {
			return true
		}
	}
	return false
}

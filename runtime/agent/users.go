package agent

import (
	"bufio"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"google.golang.org/grpc/codes"

	api "github.com/macvz/macvz/runtime/agentapi"
)

// passwdEntry is one line of /etc/passwd.
type passwdEntry struct {
	name     string
	uid, gid uint32
}

// readColonFile calls fn with the fields of each line of an /etc file.
func readColonFile(path string, fn func(f []string)) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		l := strings.TrimSpace(sc.Text())
		if l == "" || strings.HasPrefix(l, "#") {
			continue
		}
		fn(strings.Split(l, ":"))
	}
	return sc.Err()
}

// lookupPasswd finds a user by name (when name is set) or by uid.
func lookupPasswd(etc, name string, uid uint32) (passwdEntry, bool) {
	var found passwdEntry
	ok := false
	readColonFile(filepath.Join(etc, "passwd"), func(f []string) {
		if ok || len(f) < 4 {
			return
		}
		u, err1 := strconv.ParseUint(f[2], 10, 32)
		g, err2 := strconv.ParseUint(f[3], 10, 32)
		if err1 != nil || err2 != nil {
			return
		}
		if (name != "" && f[0] == name) || (name == "" && uint32(u) == uid) {
			found, ok = passwdEntry{name: f[0], uid: uint32(u), gid: uint32(g)}, true
		}
	})
	return found, ok
}

// memberGroups are the gids of the groups /etc/group lists name in.
func memberGroups(etc, name string) []uint32 {
	var out []uint32
	readColonFile(filepath.Join(etc, "group"), func(f []string) {
		if len(f) < 4 || name == "" {
			return
		}
		g, err := strconv.ParseUint(f[2], 10, 32)
		if err != nil {
			return
		}
		if slices.Contains(strings.Split(f[3], ","), name) {
			out = append(out, uint32(g))
		}
	})
	return out
}

// resolveUser applies username, gid_from_passwd and groups_from_etc to a
// CreateProcessRequest (in place), from the guest's etc directory.
func resolveUser(etc string, req *api.CreateProcessRequest) error {
	if req.Username == "" && !req.GidFromPasswd && !req.GroupsFromEtc {
		return nil
	}
	e, ok := lookupPasswd(etc, req.Username, req.Uid)
	if req.Username != "" {
		if !ok {
			return errf(codes.NotFound, "user %q is not in the guest's %s", req.Username, filepath.Join(etc, "passwd"))
		}
		req.Uid = e.uid
	}
	if ok && req.GidFromPasswd {
		req.Gid = e.gid
	}
	if ok && req.GroupsFromEtc {
		for _, g := range memberGroups(etc, e.name) {
			if g != req.Gid && !slices.Contains(req.AdditionalGids, g) {
				req.AdditionalGids = append(req.AdditionalGids, g)
			}
		}
	}
	return nil
}

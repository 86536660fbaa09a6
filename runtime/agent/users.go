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
// CreateProcessRequest (in place), from the guest's user database:
// etc's passwd and group files on Linux guests, the directory service on
// macOS guests (guestUsers).
func resolveUser(etc string, req *api.CreateProcessRequest) error {
	if req.Username == "" && !req.GidFromPasswd && !req.GroupsFromEtc {
		return nil
	}
	return resolveUserIn(guestUsers(etc), req)
}

// userDB is where resolveUser looks users and their groups up.
type userDB interface {
	// lookup finds a user by name (when name is set) or by uid; ok is
	// false for a user the database does not have.
	lookup(name string, uid uint32) (e passwdEntry, ok bool, err error)
	// groups are the gids of the groups e is a member of.
	groups(e passwdEntry) ([]uint32, error)
	// where names the database in errors.
	where() string
	// maxGroups is how many groups a process can have, its gid
	// included (0: no limit): the groups found beyond it are left out,
	// as initgroups(3) does.
	maxGroups() int
}

// etcUsers is the guest's /etc/passwd and /etc/group (Linux guests).
type etcUsers string

func (etc etcUsers) lookup(name string, uid uint32) (passwdEntry, bool, error) {
	e, ok := lookupPasswd(string(etc), name, uid)
	return e, ok, nil
}

func (etc etcUsers) groups(e passwdEntry) ([]uint32, error) {
	return memberGroups(string(etc), e.name), nil
}

func (etc etcUsers) where() string { return "the guest's " + filepath.Join(string(etc), "passwd") }

func (etc etcUsers) maxGroups() int { return 0 }

func resolveUserIn(db userDB, req *api.CreateProcessRequest) error {
	e, ok, err := db.lookup(req.Username, req.Uid)
	if err != nil {
		return err
	}
	if req.Username != "" {
		if !ok {
			return errf(codes.NotFound, "user %q is not in %s", req.Username, db.where())
		}
		req.Uid = e.uid
	}
	if ok && req.GidFromPasswd {
		req.Gid = e.gid
	}
	if ok && req.GroupsFromEtc {
		gs, err := db.groups(e)
		if err != nil {
			return err
		}
		for _, g := range gs {
			if n := db.maxGroups(); n > 0 && 1+len(req.AdditionalGids) >= n {
				break
			}
			if g != req.Gid && !slices.Contains(req.AdditionalGids, g) {
				req.AdditionalGids = append(req.AdditionalGids, g)
			}
		}
	}
	return nil
}

package agent

import (
	"errors"
	"math"
	"os/user"
	"slices"
	"strconv"

	"google.golang.org/grpc/codes"
)

// Users of macOS guests. macOS keeps its users and groups in Open
// Directory: /etc/passwd is "a legacy BSD 4.3 format file ... mostly
// unused" (passwd(5)), and the users an image is made with (Tart's
// `admin`, uid 501) are not in it. The C library asks the directory
// service: getpwnam_r/getpwuid_r answer from opendirectoryd, and
// getgrouplist(3) "obtains information from opendirectoryd(8) to
// construct the group access list", the primary group included.
//
// Go's os/user calls exactly those on darwin, through libSystem, also
// in a build without cgo (os/user's cgo_lookup_syscall.go and
// getgrouplist_syscall.go carry `!osusergo && darwin`). That is what
// dirUsers uses rather than running dscl(1) or id(1) and parsing their
// output: the same records, the answer a login gets (id -G prints the
// same list), nested and network-directory groups included, no second
// process per container and no tool output (whose content the guest's
// directory decides) to parse. What is left to check is what any
// directory may hold: the numbers come back as decimal strings and are
// parsed strictly (directoryID), and uid or gid 4294967295, which
// setuid(2)/setgid(2) take as "leave unchanged" (-1), is refused, or a
// record holding it would run the process as root.

// maxProcessGroups is how many groups a macOS process can have:
// setgroups(2) fails with EINVAL above NGROUPS_MAX (16), and
// initgroups(3) "sets at most 16 group IDs in the process credentials"
// (the kernel asks opendirectoryd about further memberships only for
// processes that did not set their groups themselves).
const maxProcessGroups = 16

// dirUsers looks users up through the directory service (os/user); the
// functions are os/user's, replaced in tests.
type dirUsers struct {
	lookupName func(name string) (*user.User, error)
	lookupID   func(uid string) (*user.User, error)
	groupIDs   func(u *user.User) ([]string, error)
}

// directoryUsers is the directory service of the machine the agent runs
// on.
func directoryUsers() dirUsers {
	return dirUsers{lookupName: user.Lookup, lookupID: user.LookupId, groupIDs: (*user.User).GroupIds}
}

func (d dirUsers) where() string { return "the guest's directory service (Open Directory)" }

func (d dirUsers) maxGroups() int { return maxProcessGroups }

func (d dirUsers) lookup(name string, uid uint32) (passwdEntry, bool, error) {
	var u *user.User
	var err error
	if name != "" {
		u, err = d.lookupName(name)
	} else {
		u, err = d.lookupID(strconv.FormatUint(uint64(uid), 10))
	}
	var unknownName user.UnknownUserError
	var unknownID user.UnknownUserIdError
	switch {
	case errors.As(err, &unknownName), errors.As(err, &unknownID):
		return passwdEntry{}, false, nil
	case err != nil:
		return passwdEntry{}, false, errf(codes.Unavailable, "looking user %s up in %s: %v", userRef(name, uid), d.where(), err)
	case u == nil:
		return passwdEntry{}, false, nil
	}
	e, err := dirEntry(u)
	if err != nil {
		return passwdEntry{}, false, errf(codes.FailedPrecondition, "user %s in %s: %v", userRef(name, uid), d.where(), err)
	}
	return e, true, nil
}

// groups are the user's groups as getgrouplist(3) has them, the primary
// group first; ids that are not plain decimal numbers, or are -1, are
// left out.
func (d dirUsers) groups(e passwdEntry) ([]uint32, error) {
	ids, err := d.groupIDs(&user.User{Username: e.name, Uid: strconv.FormatUint(uint64(e.uid), 10), Gid: strconv.FormatUint(uint64(e.gid), 10)})
	if err != nil {
		return nil, errf(codes.Unavailable, "listing the groups of user %q in %s: %v", e.name, d.where(), err)
	}
	out := []uint32{e.gid}
	for _, s := range ids {
		g, err := directoryID(s)
		if err != nil || slices.Contains(out, g) {
			continue
		}
		out = append(out, g)
	}
	return out, nil
}

// dirEntry is a directory record as resolveUser needs it.
func dirEntry(u *user.User) (passwdEntry, error) {
	uid, err := directoryID(u.Uid)
	if err != nil {
		return passwdEntry{}, errors.New("its uid " + strconv.Quote(u.Uid) + " " + err.Error())
	}
	gid, err := directoryID(u.Gid)
	if err != nil {
		return passwdEntry{}, errors.New("its primary gid " + strconv.Quote(u.Gid) + " " + err.Error())
	}
	return passwdEntry{name: u.Username, uid: uid, gid: gid}, nil
}

// directoryID parses a uid or gid the directory service gave: plain
// decimal digits, below 4294967295 (which is -1, "no change", to
// setuid(2) and setgid(2)).
func directoryID(s string) (uint32, error) {
	if s == "" || len(s) > 10 {
		return 0, errors.New("is not a uid or gid")
	}
	for _, c := range []byte(s) {
		if c < '0' || c > '9' {
			return 0, errors.New("is not a decimal number")
		}
	}
	n, err := strconv.ParseUint(s, 10, 32)
	if err != nil {
		return 0, errors.New("is out of range")
	}
	if n == math.MaxUint32 {
		return 0, errors.New("is -1, which means no change to setuid and setgid")
	}
	return uint32(n), nil
}

func userRef(name string, uid uint32) string {
	if name != "" {
		return strconv.Quote(name)
	}
	return "with uid " + strconv.FormatUint(uint64(uid), 10)
}

// processGroups orders a process's groups as the macOS kernel keeps
// them: the effective gid is the first entry of its group list, and
// setgid(2) after setgroups(2) (what os/exec does with a Credential)
// overwrites that first entry with the gid unless the gid is already in
// the list, so the first supplementary group would be lost. The gid
// goes first, each group once; more than maxProcessGroups in all is an
// error (setgroups would fail with EINVAL).
func processGroups(gid uint32, groups []uint32) ([]uint32, error) {
	out := make([]uint32, 0, len(groups)+1)
	out = append(out, gid)
	for _, g := range groups {
		if !slices.Contains(out, g) {
			out = append(out, g)
		}
	}
	if len(out) > maxProcessGroups {
		return nil, errf(codes.InvalidArgument, "%d groups (the gid and %d supplementary groups): a macOS process can have at most %d", len(out), len(out)-1, maxProcessGroups)
	}
	return out, nil
}

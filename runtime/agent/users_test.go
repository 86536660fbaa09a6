package agent

import (
	"errors"
	"os"
	"os/user"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	api "github.com/macvz/macvz/runtime/agentapi"
)

func TestResolveUser(t *testing.T) {
	etc := t.TempDir()
	os.WriteFile(filepath.Join(etc, "passwd"), []byte("root:x:0:0::/root:/bin/sh\n# comment\nwww-data:x:33:33::/var/www:/bin/false\nalice:x:1000:1000::/home/alice:/bin/sh\n"), 0o644)
	os.WriteFile(filepath.Join(etc, "group"), []byte("root:x:0:\nwww-data:x:33:\nstaff:x:50:alice,bob\nvideo:x:44:alice\naudio:x:29:bob\n"), 0o644)
	// Linux guests' users are in etc (resolveUser); elsewhere the etc
	// files are tested as such.
	resolveUser := resolveUser
	if runtime.GOOS != "linux" {
		resolveUser = func(etc string, req *api.CreateProcessRequest) error { return resolveUserIn(etcUsers(etc), req) }
	}
	for _, tc := range []struct {
		name string
		req  *api.CreateProcessRequest
		uid  uint32
		gid  uint32
		gids []uint32
	}{
		{"by name", &api.CreateProcessRequest{Username: "www-data", GidFromPasswd: true, GroupsFromEtc: true}, 33, 33, nil},
		{"by uid with groups", &api.CreateProcessRequest{Uid: 1000, GidFromPasswd: true, GroupsFromEtc: true, AdditionalGids: []uint32{9}}, 1000, 1000, []uint32{9, 50, 44}},
		{"explicit gid kept", &api.CreateProcessRequest{Username: "alice", Gid: 7, GroupsFromEtc: true}, 1000, 7, []uint32{50, 44}},
		{"uid without entry", &api.CreateProcessRequest{Uid: 4242, Gid: 5, GidFromPasswd: true, GroupsFromEtc: true}, 4242, 5, nil},
		{"nothing asked", &api.CreateProcessRequest{Uid: 33}, 33, 0, nil},
	} {
		if err := resolveUser(etc, tc.req); err != nil {
			t.Errorf("%s: %v", tc.name, err)
			continue
		}
		if tc.req.Uid != tc.uid || tc.req.Gid != tc.gid || !slices.Equal(tc.req.AdditionalGids, tc.gids) {
			t.Errorf("%s: %d:%d %v; want %d:%d %v", tc.name, tc.req.Uid, tc.req.Gid, tc.req.AdditionalGids, tc.uid, tc.gid, tc.gids)
		}
	}
	if err := resolveUser(etc, &api.CreateProcessRequest{Username: "nobody"}); err == nil {
		t.Error("unknown user resolved")
	}
}

// fakeDirectory answers like os/user on a macOS guest made from a Tart
// image: admin (uid 501, primary group staff) is in Open Directory, and
// getgrouplist gives the groups id -G prints for it.
type fakeDirectory struct {
	users  map[string]*user.User
	groups map[string][]string
	err    error // every lookup fails so (opendirectoryd gone)
}

func (f fakeDirectory) db() dirUsers {
	return dirUsers{
		lookupName: func(name string) (*user.User, error) {
			if f.err != nil {
				return nil, f.err
			}
			if u, ok := f.users[name]; ok {
				return u, nil
			}
			return nil, user.UnknownUserError(name)
		},
		lookupID: func(uid string) (*user.User, error) {
			if f.err != nil {
				return nil, f.err
			}
			for _, u := range f.users {
				if u.Uid == uid {
					return u, nil
				}
			}
			n, _ := strconv.Atoi(uid)
			return nil, user.UnknownUserIdError(n)
		},
		groupIDs: func(u *user.User) ([]string, error) {
			if f.err != nil {
				return nil, f.err
			}
			return f.groups[u.Username], nil
		},
	}
}

var tartDirectory = fakeDirectory{
	users: map[string]*user.User{
		"admin":    {Uid: "501", Gid: "20", Username: "admin", Name: "admin", HomeDir: "/Users/admin"},
		"root":     {Uid: "0", Gid: "0", Username: "root", Name: "System Administrator", HomeDir: "/var/root"},
		"_www":     {Uid: "70", Gid: "70", Username: "_www", Name: "World Wide Web Server", HomeDir: "/Library/WebServer"},
		"nobody":   {Uid: "4294967294", Gid: "4294967294", Username: "nobody", Name: "Unprivileged User", HomeDir: "/var/empty"},
		"minus1":   {Uid: "4294967295", Gid: "20", Username: "minus1"},
		"badgid":   {Uid: "600", Gid: "-1", Username: "badgid"},
		"hexuid":   {Uid: "0x1f5", Gid: "20", Username: "hexuid"},
		"lots":     {Uid: "502", Gid: "20", Username: "lots"},
		"spaced":   {Uid: " 503", Gid: "20", Username: "spaced"},
		"odd:name": {Uid: "504", Gid: "20", Username: "odd:name"},
	},
	groups: map[string][]string{
		// id -G admin on a Tart macOS image.
		"admin":    {"20", "12", "61", "79", "80", "81", "98", "701", "33", "100", "204", "250", "395", "398", "399", "400"},
		"root":     {"0", "1", "2", "3", "4", "5", "8", "9", "12", "20", "29", "61", "80", "33", "98", "100", "204", "250", "395", "398", "399", "400", "701", "702"},
		"_www":     {"70", "12", "61", "70", "x", "-1", "4294967295", "4294967296", ""},
		"lots":     {"20", "1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "11", "12", "13", "14", "15", "16", "17", "18"},
		"odd:name": {"20", "12"},
	},
}

func TestResolveUserDirectory(t *testing.T) {
	db := tartDirectory.db()
	admin := []uint32{12, 61, 79, 80, 81, 98, 701, 33, 100, 204, 250, 395, 398, 399, 400}
	for _, tc := range []struct {
		name string
		req  *api.CreateProcessRequest
		uid  uint32
		gid  uint32
		gids []uint32
	}{
		// runAsUser: 501 as kubelet sends it: the primary group and
		// every group of the user (the gid is added first when the
		// process starts: 16 in all).
		{"uid 501", &api.CreateProcessRequest{Uid: 501, GidFromPasswd: true, GroupsFromEtc: true}, 501, 20, admin},
		{"by name", &api.CreateProcessRequest{Username: "admin", GidFromPasswd: true, GroupsFromEtc: true}, 501, 20, admin},
		// runAsGroup given: the primary group becomes a supplementary
		// one; 16 in all, so the last group found is left out.
		{"explicit gid", &api.CreateProcessRequest{Uid: 501, Gid: 7, GroupsFromEtc: true}, 501, 7, append([]uint32{20}, admin[:14]...)},
		// supplementalGroups come first; the user's fill up to 16.
		{"pod groups first", &api.CreateProcessRequest{Uid: 501, GidFromPasswd: true, GroupsFromEtc: true, AdditionalGids: []uint32{5000, 80}}, 501, 20, append([]uint32{5000, 80}, 12, 61, 79, 81, 98, 701, 33, 100, 204, 250, 395, 398, 399)},
		{"root", &api.CreateProcessRequest{Uid: 0, GidFromPasswd: true, GroupsFromEtc: true}, 0, 0, []uint32{1, 2, 3, 4, 5, 8, 9, 12, 20, 29, 61, 80, 33, 98, 100}},
		{"nobody", &api.CreateProcessRequest{Username: "nobody", GidFromPasswd: true}, 4294967294, 4294967294, nil},
		// Bad ids, -1 and repeats among the groups are left out.
		{"hostile groups", &api.CreateProcessRequest{Uid: 70, GidFromPasswd: true, GroupsFromEtc: true}, 70, 70, []uint32{12, 61}},
		{"many groups", &api.CreateProcessRequest{Uid: 502, GidFromPasswd: true, GroupsFromEtc: true}, 502, 20, []uint32{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15}},
		{"odd name", &api.CreateProcessRequest{Username: "odd:name", GidFromPasswd: true, GroupsFromEtc: true}, 504, 20, []uint32{12}},
		{"uid not in the directory", &api.CreateProcessRequest{Uid: 4242, Gid: 5, GidFromPasswd: true, GroupsFromEtc: true}, 4242, 5, nil},
		{"nothing asked", &api.CreateProcessRequest{Uid: 501}, 501, 0, nil},
	} {
		var err error
		if tc.req.Username != "" || tc.req.GidFromPasswd || tc.req.GroupsFromEtc {
			err = resolveUserIn(db, tc.req)
		}
		if err != nil {
			t.Errorf("%s: %v", tc.name, err)
			continue
		}
		if tc.req.Uid != tc.uid || tc.req.Gid != tc.gid || !slices.Equal(tc.req.AdditionalGids, tc.gids) {
			t.Errorf("%s: %d:%d %v; want %d:%d %v", tc.name, tc.req.Uid, tc.req.Gid, tc.req.AdditionalGids, tc.uid, tc.gid, tc.gids)
		}
		if g, err := processGroups(tc.req.Gid, tc.req.AdditionalGids); err != nil || g[0] != tc.req.Gid {
			t.Errorf("%s: process groups %v %v", tc.name, g, err)
		}
	}

	// An unknown name is NotFound, as on Linux guests.
	err := resolveUserIn(db, &api.CreateProcessRequest{Username: "alice"})
	if status.Code(err) != codes.NotFound || !strings.Contains(err.Error(), `"alice"`) || !strings.Contains(err.Error(), "directory service") {
		t.Errorf("unknown user: %v", err)
	}
	// A record whose ids are not plain numbers, or -1 (setuid's "no
	// change": the process would stay root), is refused, not guessed.
	for _, name := range []string{"minus1", "badgid", "hexuid", "spaced"} {
		req := &api.CreateProcessRequest{Username: name, GidFromPasswd: true}
		if err := resolveUserIn(db, req); status.Code(err) != codes.FailedPrecondition {
			t.Errorf("%s: %v (uid %d)", name, err, req.Uid)
		}
	}
	// The directory service not answering is not "no such user".
	down := fakeDirectory{err: errors.New("opendirectoryd: connection invalid")}.db()
	for _, req := range []*api.CreateProcessRequest{{Username: "admin"}, {Uid: 501, GidFromPasswd: true}} {
		if err := resolveUserIn(down, req); status.Code(err) != codes.Unavailable {
			t.Errorf("directory down, %v: %v", req, err)
		}
	}
	groupsDown := tartDirectory
	groupsDown.groups = nil
	d := groupsDown.db()
	d.groupIDs = func(*user.User) ([]string, error) { return nil, errors.New("getgrouplist failed") }
	if err := resolveUserIn(d, &api.CreateProcessRequest{Uid: 501, GroupsFromEtc: true}); status.Code(err) != codes.Unavailable {
		t.Errorf("groups failing: %v", err)
	}
}

func TestDirectoryID(t *testing.T) {
	for s, want := range map[string]int64{
		"0": 0, "501": 501, "20": 20, "4294967294": 4294967294, "00501": 501,
		"4294967295": -1, "4294967296": -1, "99999999999": -1, "-1": -1, "-2": -1, "+501": -1,
		"": -1, " 501": -1, "501 ": -1, "501\n": -1, "0x1f5": -1, "５０１": -1, "1e3": -1, "501\x00": -1,
	} {
		n, err := directoryID(s)
		if want < 0 {
			if err == nil {
				t.Errorf("%q: %d, want an error", s, n)
			}
		} else if err != nil || int64(n) != want {
			t.Errorf("%q: %d %v, want %d", s, n, err, want)
		}
	}
}

func TestProcessGroups(t *testing.T) {
	for _, tc := range []struct {
		gid    uint32
		groups []uint32
		want   []uint32
	}{
		{20, nil, []uint32{20}},
		{20, []uint32{80, 12}, []uint32{20, 80, 12}},
		{20, []uint32{80, 20, 12, 80}, []uint32{20, 80, 12}},
		{0, []uint32{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15}, []uint32{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15}},
	} {
		if got, err := processGroups(tc.gid, tc.groups); err != nil || !slices.Equal(got, tc.want) {
			t.Errorf("%d %v: %v %v, want %v", tc.gid, tc.groups, got, err, tc.want)
		}
	}
	if _, err := processGroups(0, []uint32{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16}); status.Code(err) != codes.InvalidArgument {
		t.Errorf("17 groups: %v", err)
	}
}

// The Linux guests' database is the /etc files, as before.
func TestGuestUsersLinux(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("linux only")
	}
	if _, ok := guestUsers("/etc").(etcUsers); !ok {
		t.Error("Linux guests do not use /etc/passwd")
	}
	if g, err := credentialGroups(5, []uint32{7}); err != nil || !slices.Equal(g, []uint32{7}) {
		t.Errorf("credential groups on Linux: %v %v", g, err)
	}
}

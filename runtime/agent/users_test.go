package agent

import (
	"os"
	"path/filepath"
	"slices"
	"testing"

	api "github.com/macvz/macvz/runtime/agentapi"
)

func TestResolveUser(t *testing.T) {
	etc := t.TempDir()
	os.WriteFile(filepath.Join(etc, "passwd"), []byte("root:x:0:0::/root:/bin/sh\n# comment\nwww-data:x:33:33::/var/www:/bin/false\nalice:x:1000:1000::/home/alice:/bin/sh\n"), 0o644)
	os.WriteFile(filepath.Join(etc, "group"), []byte("root:x:0:\nwww-data:x:33:\nstaff:x:50:alice,bob\nvideo:x:44:alice\naudio:x:29:bob\n"), 0o644)
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
